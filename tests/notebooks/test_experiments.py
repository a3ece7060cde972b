"""Experiment manifests on the real default model: what reproduces, what must not, and why."""
import hashlib
import json
import os
import shutil

import pytest

from toolkit import errors
from toolkit import experiments as ex
from toolkit.__main__ import main as cli
from toolkit.core.engine import backend


@pytest.fixture(scope="module")
def manifest_path(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("exp") / "manifest.json"
    ex.record(path, model, sampling={"temperature": 0.7, "top_p": 0.9}, seed=1234, extra={"loss": 3.25})
    return path


def test_manifest_holds_every_field(manifest_path, smollm2_gguf_path):
    m = json.loads(manifest_path.read_text())
    assert m["schema"] == ex.SCHEMA and m["toolkit"]["version"]
    assert m["model"]["sha256"] == hashlib.sha256(open(smollm2_gguf_path, "rb").read()).hexdigest()
    assert len(m["tokenizer"]["sha256"]) == 64 and len(m["tokenizer"]["chat_template_sha256"]) == 64
    assert m["sampling"]["temperature"] == 0.7 and m["sampling"]["top_p"] == 0.9 and m["seed"] == 1234
    assert m["engine"]["threads"] == backend.get_threads() and m["engine"]["build_info"] == backend.build_info()
    assert m["extra"] == {"loss": 3.25}
    p = m["probe"]
    assert p["shape"] == [len(p["token_ids"]), 49152] and len(p["logits_sha256"]) == 64
    assert len(p["argmax"]) == len(p["token_ids"]) and len(p["top"]) == 5


def test_same_model_reproduces_exactly(model, manifest_path):
    r = ex.check(manifest_path, model=model)
    assert r.ok and r.level == "exact", r.summary()


def test_thread_count_does_not_change_a_bit(model, manifest_path):
    r = ex.check(manifest_path, model=model, threads=1)
    assert r.ok and r.level == "exact", r.summary()
    assert "engine.threads" in [d.field for d in r.differences]  # noted, not fatal
    assert backend.get_threads() == json.loads(manifest_path.read_text())["engine"]["threads"]


def test_scalar_kernels_reproduce_within_tolerance(model, manifest_path):
    # The scalar twins sum in another order than the AVX-512 kernels: bits differ, values agree.
    backend.set_simd(False)
    try:
        r = ex.check(manifest_path, model=model)
    finally:
        backend.set_simd(True)
    assert r.ok, r.summary()
    assert r.level in ("close", "exact") and (r.max_abs_diff or 0.0) <= ex.PROBE_ATOL


def test_a_different_model_file_does_not_reproduce(manifest_path, smollm2_gguf_path, tmp_path):
    other = tmp_path / "changed.gguf"
    shutil.copyfile(smollm2_gguf_path, other)
    with open(other, "r+b") as f:  # perturb weight data near the end (tensor data, not the header)
        f.seek(-4096, os.SEEK_END)
        block = bytearray(f.read(2048))
        f.seek(-4096, os.SEEK_END)
        f.write(bytes(b ^ 0x5A for b in block))
    r = ex.check(manifest_path, model=str(other))
    assert not r.ok and r.level == "differs"
    assert "model.sha256" in r.failed_fields


def test_a_changed_probe_with_the_same_kernels_is_named(model, manifest_path, tmp_path):
    m = json.loads(manifest_path.read_text())
    m["probe"]["logits_sha256"] = "0" * 64
    m["tokenizer"]["chat_template_sha256"] = "f" * 64
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(m))
    r = ex.check(bad, model=model)
    assert not r.ok
    assert set(r.failed_fields) == {"probe.logits_sha256", "tokenizer.chat_template_sha256"}
    assert "does NOT reproduce" in r.summary()


def test_cli_exit_codes(manifest_path, tmp_path, capsys):
    # loads the model named in the manifest by itself
    assert cli(["repro", "check", str(manifest_path)]) == 0
    assert "reproduces exactly" in capsys.readouterr().out
    m = json.loads(manifest_path.read_text())
    m["model"]["sha256"] = "0" * 64
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(m))
    with pytest.raises(SystemExit) as exc:
        cli(["repro", "check", str(bad)])
    assert exc.value.code == 1 and "model.sha256" in capsys.readouterr().out
    assert cli(["repro", "check", str(tmp_path / "missing.json")]) == 2


def test_bad_input_raises_typed_errors(model, tmp_path):
    with pytest.raises(ex.ManifestNotFoundError):
        ex.check(tmp_path / "nope.json")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(errors.FormatError):
        ex.load_manifest(tmp_path / "x.json")
    (tmp_path / "y.json").write_text(json.dumps({"schema": "something else"}))
    with pytest.raises(errors.FormatError):
        ex.load_manifest(tmp_path / "y.json")
    with pytest.raises(errors.ArgumentTypeError):
        ex.record(tmp_path / "z.json", model, extra={"f": object()})
    with pytest.raises(errors.ArgumentTypeError):
        ex.record(tmp_path / "z.json", "not a model")
    with pytest.raises(errors.InvalidArgumentError):
        ex.record(tmp_path / "z.json", model, sampling={"temperature": -1})
    # not dicts: a builtin ValueError from dict() before ("dictionary update sequence element")
    with pytest.raises(errors.ArgumentTypeError, match="sampling must be a dict"):
        ex.record(tmp_path / "z.json", model, sampling="x")
    with pytest.raises(errors.ArgumentTypeError, match="extra must be a dict"):
        ex.record(tmp_path / "z.json", model, extra=[1, 2])
    assert not (tmp_path / "z.json").exists()


def test_record_into_a_directory(model, tmp_path):
    out = ex.record(tmp_path / "run1", model, seed=7)
    assert out["_path"] == str(tmp_path / "run1" / "manifest.json")
    assert ex.load_manifest(tmp_path / "run1")["seed"] == 7


def test_file_hash_is_cached_and_follows_changes(tmp_path, monkeypatch):
    monkeypatch.setattr(ex, "_sha_cache_dir", lambda: tmp_path / "cache")
    f = tmp_path / "w.bin"
    f.write_bytes(b"abc" * 1000)
    assert ex.file_sha256(f) == hashlib.sha256(b"abc" * 1000).hexdigest()
    assert len(list((tmp_path / "cache").iterdir())) == 1
    calls = []
    monkeypatch.setattr(ex, "_sha256_file", lambda p: calls.append(p) or "cached?")
    assert ex.file_sha256(f) == hashlib.sha256(b"abc" * 1000).hexdigest() and not calls
    f.write_bytes(b"abd" * 1001)  # new size (and mtime): hashed again
    assert ex.file_sha256(f) == "cached?" and calls
