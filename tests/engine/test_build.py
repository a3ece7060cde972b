"""The compiled engine reports what it is, and Python refuses a build that does not match."""
import os
import shutil

import pytest

import toolkit
from toolkit import errors
from toolkit.core.engine import _lib, backend

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_engine_reports_version_and_flags():
    assert backend.engine_version() == toolkit.__version__
    info = backend.build_info()
    assert "-O" in info and "simd=" in info


def test_current_build_matches_sources():
    _lib.check_build(ROOT)


def test_stale_build_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("TOOLKIT_ALLOW_STALE_BUILD", raising=False)
    shutil.copytree(os.path.join(ROOT, "cengine"), tmp_path / "cengine")
    with open(tmp_path / "cengine" / "src" / "norm.c", "a") as f:
        f.write("\n/* an edit made after the build */\n")
    with pytest.raises(errors.BuildError, match="pip install -e"):
        _lib.check_build(str(tmp_path))
    monkeypatch.setenv("TOOLKIT_ALLOW_STALE_BUILD", "1")
    _lib.check_build(str(tmp_path))


def test_version_mismatch_is_refused(monkeypatch):
    monkeypatch.setattr(toolkit, "__version__", "9.9.9")
    with pytest.raises(errors.BuildError, match="rebuild"):
        _lib.check_build(ROOT)


def test_threads_and_simd_settings():
    old = backend.get_threads()
    try:
        backend.set_threads(1)
        assert backend.get_threads() == 1
        with pytest.raises(errors.InvalidArgumentError):
            backend.set_threads(0)
        with pytest.raises(errors.ArgumentTypeError):
            backend.set_threads("2")
    finally:
        backend.set_threads(old)
    was = backend.get_simd()
    backend.set_simd(False)
    assert backend.get_simd() is False
    backend.set_simd(True)
    assert backend.get_simd() == was


def test_portable_build_compiles(tmp_path):
    """TOOLKIT_PORTABLE=1 builds without -march=native: the AVX2 kernels drop out and the scalar
    twins must stand alone (code outside the `#if CE_HAVE_AVX2` blocks may not use SIMD-only names)."""
    import subprocess
    import sysconfig
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC").split()[0] or "cc"
    src = os.path.join(ROOT, "cengine", "src")
    files = sorted(os.path.join(src, f) for f in os.listdir(src) if f.endswith(".c"))
    r = subprocess.run([cc, "-std=c11", "-D_GNU_SOURCE", "-O1", "-Wall", "-Wno-unused-function",
                        "-Werror", "-fsyntax-only", "-I", os.path.join(ROOT, "cengine", "include"),
                        '-DCE_SOURCE_HASH="x"', '-DCE_BUILD_FLAGS="x"'] + files,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
