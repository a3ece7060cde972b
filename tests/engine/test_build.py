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
    for bad in (None, "yes", 1):  # None used to switch every kernel to the scalar reference silently
        with pytest.raises(errors.ArgumentTypeError):
            backend.set_simd(bad)
    assert backend.get_simd() == was
    with pytest.raises(errors.ArgumentTypeError):
        backend.bench_read_bandwidth("a")
    with pytest.raises(errors.InvalidArgumentError):
        backend.bench_read_bandwidth(-1)


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


@pytest.mark.parametrize("isa", ["avx2", "avx512"])
def test_every_kernel_variant_compiles(isa):
    """Kernel variants are chosen at compile time (gemv.c's tile shapes by register count, the
    AVX2 kernels by CE_HAVE_AVX2): whatever this machine's -march=native picks, the sources must
    also compile for a plain AVX2 CPU (16 vector registers: every SIMD file, so no AVX-512-only
    intrinsic slips into an AVX2 kernel) and for an AVX-512 one (32: the files with AVX-512
    variants), so a variant this machine never builds cannot rot. Compile only: nothing runs them."""
    import subprocess
    import sysconfig
    from concurrent.futures import ThreadPoolExecutor
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC").split()[0] or "cc"
    flags = {"avx2": ["-mavx2", "-mfma", "-mf16c", "-mno-avx512f"],
             "avx512": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq",
                        "-mavx512bf16"]}[isa]
    src = os.path.join(ROOT, "cengine", "src")
    files = sorted(os.path.join(src, f) for f in os.listdir(src)
                   if f.endswith(".c") and ("__AVX512" if isa == "avx512" else "CE_HAVE_AVX2")
                   in open(os.path.join(src, f)).read())
    assert files

    def compile_one(path):  # -O0: quick, and always_inline still checks every intrinsic's target
        return subprocess.run([cc, "-std=c11", "-D_GNU_SOURCE", "-O0", "-Wall", "-Wno-unused-function", "-Werror",
                               "-S", "-o", os.devnull, "-I", os.path.join(ROOT, "cengine", "include"),
                               '-DCE_SOURCE_HASH="x"', '-DCE_BUILD_FLAGS="x"'] + flags + [path],
                              capture_output=True, text=True)

    with ThreadPoolExecutor(4) as ex:
        for path, r in zip(files, ex.map(compile_one, files)):
            assert r.returncode == 0, (path, r.stderr)
