"""Experiment manifests: write down what produced a result, and check later that it still does.

    import toolkit, toolkit.experiments as ex
    m = toolkit.load()
    ex.record("results/manifest.json", m, sampling={"temperature": 0.7}, seed=0, extra={"loss": 3.2})
    ex.check("results/manifest.json")        # -> CheckResult(ok=True, level="exact", ...)
    $ python -m toolkit repro check results/manifest.json

A manifest is plain JSON: toolkit version and git commit, engine build and CPU features, thread
count, the model file's sha256, tokenizer and chat-template hashes, sampler settings and seed, and a
fingerprint of the logits of a fixed probe prompt (sha256 of their exact F32 bytes plus sampled
values). `check` reloads the model, re-runs the probe and names every field that differs.

What decides "reproduces": the model, tokenizer and chat template must be the same files, and the
probe's logits bit-identical. Thread count never changes a bit (the engine splits work so that every
output element is summed in one fixed order), so a different thread count with different bits is a
failure. Different kernels (another CPU feature set, the scalar reference kernels, another engine
build) round differently (measured: at most 1.2e-4 on logits of magnitude ~30 between the AVX-512
and scalar kernels), so there the probe must agree within `PROBE_ATOL` and on every position's
argmax, and the result says "close" instead of "exact".

This module reads files and runs the probe through the public model API; it does no math itself.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import importlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from toolkit import errors
from toolkit.common.machine import cpu_info  # noqa: F401  (part of this module's API)

SCHEMA = "cengine-toolkit/experiment-manifest"
SCHEMA_VERSION = 1
# A fixed probe: mixed prose, digits and punctuation, 15 tokens on SmolLM2's tokenizer.
PROBE_PROMPT = "The quick brown fox jumps over the lazy dog. Paris is the capital of"
PROBE_ATOL = 2e-3            # allowed |difference| of a probe logit when the kernels differ
_SAMPLE_IDS = 8              # logits kept per position at fixed vocabulary ids (for "close" checks)
_TOP = 5                     # top logits kept of the last position
class ManifestNotFoundError(errors.ToolkitError, FileNotFoundError):
    """No manifest file at the given path."""


# ---- environment --------------------------------------------------------------------------------
def _git_info():
    """Commit and dirty flag of the checkout the toolkit was imported from; None outside one."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10)
        if commit.returncode != 0:
            return None
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None  # no git binary, or it hung: the manifest simply has no commit
    return {"commit": commit.stdout.strip(),
            "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}


def _engine_info():
    from toolkit.core.engine import backend

    info = {"version": backend.engine_version(), "build_info": backend.build_info(),
            "simd": backend.get_simd(), "threads": backend.get_threads()}
    q4_path = getattr(backend, "get_q4_path", None)  # engines that pick a Q4 kernel path at start-up
    if q4_path is not None:
        info["q4_path"] = q4_path()
    return info


def _build_flags(build_info):
    """build_info without its parenthesised remarks (start-up probe timings vary from run to run)."""
    return None if build_info is None else re.sub(r"\s*\([^)]*\)", "", build_info)


def _kernel_key(manifest):
    """What selects the kernels (and so the rounding): build, SIMD switch, CPU flags."""
    e, c = manifest.get("engine", {}), manifest.get("cpu", {})
    return (_build_flags(e.get("build_info")), e.get("simd"), e.get("q4_path"), tuple(c.get("flags") or ()),
            e.get("version"), (manifest.get("toolkit", {}).get("git") or {}).get("commit"))


# ---- hashes ---------------------------------------------------------------------------------------
def _sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _sha_cache_dir():
    from toolkit.common.hub import cache_dir

    return cache_dir() / "sha256"


def file_sha256(path):
    """sha256 of a file, hashed once and then remembered (by path, size and mtime) in the cache.

    The default model is verified by the hub already, so its known hash is reused as is."""
    path = Path(path).resolve()
    st = path.stat()
    from toolkit.common import hub

    if path.name == hub.DEFAULT_FILENAME and st.st_size > 0:
        try:
            if hub._verified(path):
                return hub.DEFAULT_SHA256
        except OSError:
            pass  # unreadable marker directory: hash it ourselves below
    stamp = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    key = hashlib.sha256(str(path).encode()).hexdigest()[:24]
    marker = _sha_cache_dir() / f"{key}.json"
    try:
        saved = json.loads(marker.read_text())
        if {k: saved.get(k) for k in stamp} == stamp and isinstance(saved.get("sha256"), str):
            return saved["sha256"]
    except (OSError, ValueError):
        pass  # no or damaged marker: hash below
    digest = _sha256_file(path)
    try:
        from toolkit.common.atomic import atomic_write

        marker.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(marker, "w") as f:
            json.dump({**stamp, "sha256": digest}, f)
    except OSError:
        pass  # a read-only cache only costs a re-hash next time
    return digest


def model_sha256(path):
    """sha256 of a weight file; for a model directory, of its files' names and hashes together."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    if not path.is_dir():
        raise errors.ModelNotFoundError(f"no model file or directory at {path}")
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(f"{p.relative_to(path).as_posix()}\0{file_sha256(p)}\n".encode())
    return h.hexdigest()


def tokenizer_sha256(tokenizer):
    """sha256 of the tokenizer as an HF tokenizer.json (vocabulary, merges, pre-tokenizer, specials)."""
    to_json = getattr(tokenizer, "to_tokenizer_json", None)
    if to_json is not None:
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "tokenizer.json")
            to_json(p)
            return _sha256_file(p)
    # A plugin's own tokenizer without that export: hash its vocabulary, id by id.
    h = hashlib.sha256()
    for i in range(tokenizer.vocab_size):
        h.update(tokenizer.id_to_token(i).encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()


def _text_sha256(text):
    return None if text is None else hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---- the model being recorded --------------------------------------------------------------------
def _parts(model):
    """(plugin, module with forward(ids, logits="all"), tokenizer) of a toolkit.Model or a plugin."""
    plugin = getattr(model, "plugin", model)
    net = getattr(plugin, "model", None)
    tok = getattr(plugin, "tokenizer", None) or getattr(net, "tokenizer", None)
    if net is None or not callable(getattr(net, "forward", None)) or tok is None:
        raise errors.ArgumentTypeError(
            f"expected a toolkit.Model or a loaded model plugin (with .model.forward and a tokenizer), "
            f"got {type(model).__name__}")
    return plugin, net, tok


def _loader(model, plugin):
    from toolkit.api import Model

    if isinstance(model, Model):
        return {"kind": "toolkit.load", "model": str(plugin.config.model),
                "kv_cache_dtype": getattr(plugin.config, "kv_cache_dtype", None)}
    cls = type(plugin)
    mod = sys.modules.get(cls.__module__)
    root = None
    if mod is not None and getattr(mod, "__file__", None):
        # the directory to put on sys.path so that the plugin's top-level package imports again
        depth = cls.__module__.count(".") + 1
        root = str(Path(mod.__file__).resolve().parents[depth - 1]) if depth else None
    return {"kind": "plugin", "factory": f"{cls.__module__}:{cls.__qualname__}", "sys_path": root,
            "model": str(getattr(plugin, "model_path", None) or getattr(plugin.config, "model", ""))}


def _model_path(plugin):
    p = getattr(plugin, "model_path", None)
    if p is None:
        raise errors.ArgumentTypeError("the plugin has no model_path: the manifest cannot name its weights")
    return str(Path(p).resolve())


def probe(model, prompt=PROBE_PROMPT, ids=None):
    """The logits fingerprint of `model` on a fixed prompt (or on given token ids).

    Returns {"prompt", "token_ids", "shape", "logits_sha256", "argmax", "sample_ids", "samples",
    "top"}: the sha256 covers the exact F32 bytes of all logits [T, vocab]."""
    _, net, tok = _parts(model)
    if ids is None:
        ids = tok.encode(prompt)
    ids = [int(i) for i in ids]
    logits = net.forward(ids, logits="all")                         # [T, vocab] F32
    if logits.dtype != "F32" or len(logits.shape) != 2:
        raise errors.DTypeError(f"the probe needs F32 logits [T, vocab], got {logits.dtype} {logits.shape}")
    t, vocab = logits.shape
    raw = logits.memoryview().cast("B")
    digest = hashlib.sha256(raw).hexdigest()
    values = logits.to_list()
    sample_ids = sorted({(k * 7919 + 11) % vocab for k in range(_SAMPLE_IDS)})
    rows = [values[r * vocab:(r + 1) * vocab] for r in range(t)]
    argmax = [max(range(vocab), key=row.__getitem__) for row in rows]
    last = rows[-1]
    top = sorted(range(vocab), key=lambda i: -last[i])[:_TOP]
    return {"prompt": prompt, "token_ids": ids, "shape": [t, vocab], "logits_sha256": digest,
            "argmax": argmax, "sample_ids": sample_ids,
            "samples": [[row[i] for i in sample_ids] for row in rows],
            "top": [[i, last[i]] for i in top]}


# ---- record ---------------------------------------------------------------------------------------
def _json_ready(value, what):
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise errors.ArgumentTypeError(f"{what} must be JSON-serialisable (numbers, strings, lists, dicts): {exc}")
    return value


def build_manifest(model, sampling=None, seed=None, extra=None):
    """The manifest dict `record` writes (nothing is written)."""
    import toolkit
    from toolkit.common.generation import SamplingParams

    plugin, _, tok = _parts(model)
    for name, value in (("sampling", sampling), ("extra", extra)):
        if value is not None and not isinstance(value, Mapping):
            raise errors.ArgumentTypeError(f"{name} must be a dict (or None), got {type(value).__name__}")
    sampling = dict(sampling or {})
    if seed is not None:
        sampling["seed"] = seed
    defaults = getattr(plugin, "sampling_defaults", {}) or {}
    params = SamplingParams.from_kwargs(defaults, **sampling)  # validates; fills in defaults
    settings = {k: getattr(params, k) for k in params.__dataclass_fields__}
    path = _model_path(plugin)
    return {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "toolkit": {"version": toolkit.__version__, "git": _git_info()},
        "python": {"version": platform.python_version(), "implementation": platform.python_implementation()},
        "engine": _engine_info(),
        "cpu": cpu_info(),
        "model": {"path": path, "sha256": model_sha256(path), "loader": _loader(model, plugin),
                  "config": _json_safe_config(plugin)},
        "tokenizer": {"sha256": tokenizer_sha256(tok), "vocab_size": tok.vocab_size,
                      "chat_template_sha256": _text_sha256(getattr(tok, "chat_template", None))},
        "sampling": settings,
        "seed": params.seed,
        "probe": probe(model),
        "extra": _json_ready(dict(extra or {}), "extra"),
    }


def _json_safe_config(plugin):
    cfg = getattr(plugin, "config", None)
    fields = getattr(cfg, "__dataclass_fields__", None)
    if not fields:
        return None
    out = {}
    for k in fields:
        v = getattr(cfg, k)
        out[k] = v if isinstance(v, (int, float, str, bool, type(None), list)) else repr(v)
    return out


def record(path, model, sampling=None, seed=None, extra=None):
    """Writes the experiment manifest of `model` (a toolkit.Model or a loaded plugin) to `path`
    (a .json file, or a directory that gets manifest.json) and returns it as a dict.

    sampling: generation settings used (temperature, top_p, ...; the model's defaults fill the
    rest); seed: the seed used; extra: any JSON-serialisable results or notes to keep with it."""
    manifest = build_manifest(model, sampling=sampling, seed=seed, extra=extra)
    target = Path(path)
    if target.is_dir() or (not target.suffix and not target.exists()):
        target = target / "manifest.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    from toolkit.common.atomic import atomic_write

    with atomic_write(target, "w") as f:
        json.dump(manifest, f, indent=1, allow_nan=False)
        f.write("\n")
    manifest["_path"] = str(target)
    return manifest


def load_manifest(path):
    """The manifest dict at `path` (a file or a directory holding manifest.json); FormatError if it
    is not one."""
    p = Path(path)
    if p.is_dir():
        p = p / "manifest.json"
    try:
        with open(p) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ManifestNotFoundError(f"no manifest at {p}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.FormatError(f"{p} is not a JSON manifest: {exc}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise errors.FormatError(f"{p} is not a {SCHEMA} file")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise errors.UnsupportedError(
            f"{p} has manifest version {data.get('schema_version')}; this toolkit reads version {SCHEMA_VERSION}")
    for key in ("model", "tokenizer", "probe", "engine"):
        if not isinstance(data.get(key), dict):
            raise errors.FormatError(f"{p}: the manifest has no {key!r} section")
    return data


# ---- check ----------------------------------------------------------------------------------------
@dataclass
class Difference:
    field: str
    recorded: object
    now: object
    fatal: bool            # False: noted, but not a reason to call the result irreproducible

    def __str__(self):
        return f"{'DIFFERS' if self.fatal else 'note'}  {self.field}: recorded {self.recorded!r}, now {self.now!r}"


@dataclass
class CheckResult:
    ok: bool
    level: str                                   # "exact", "close" or "differs"
    differences: list = field(default_factory=list)
    max_abs_diff: float | None = None            # of the sampled probe logits, when bits differ
    manifest: dict | None = None

    @property
    def failed_fields(self):
        return [d.field for d in self.differences if d.fatal]

    def summary(self):
        if self.level == "exact":
            head = "reproduces exactly (bit-identical probe logits)"
        elif self.level == "close":
            head = (f"reproduces within tolerance (kernels differ; max |diff| {self.max_abs_diff:.3g} "
                    f"<= {PROBE_ATOL})")
        else:
            head = "does NOT reproduce: " + ", ".join(self.failed_fields)
        return "\n".join([head] + ["  " + str(d) for d in self.differences])

    def __bool__(self):
        return self.ok


def _open_for_check(manifest, model):
    """The model to probe: the one given, or the manifest's, loaded the way it was recorded."""
    if model is not None and not isinstance(model, (str, os.PathLike)):
        return model, False
    loader = manifest["model"].get("loader") or {}
    import toolkit

    if loader.get("kind") == "plugin":
        mod_name, _, qual = str(loader.get("factory", "")).partition(":")
        if loader.get("sys_path") and loader["sys_path"] not in sys.path:
            sys.path.insert(0, loader["sys_path"])
        try:
            obj = importlib.import_module(mod_name)
            for part in qual.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as exc:
            raise errors.ModelNotFoundError(f"cannot import the recorded plugin {loader.get('factory')!r}: {exc}") from None
        plugin = obj()
        plugin.initialize(model=os.fspath(model) if model is not None else manifest["model"]["path"])
        return plugin, True
    name = model if model is not None else loader.get("model") or manifest["model"]["path"]
    if model is None and not Path(os.fspath(name)).expanduser().exists() and Path(manifest["model"]["path"]).exists():
        name = manifest["model"]["path"]
    kw = {}
    if loader.get("kv_cache_dtype"):
        kw["kv_cache_dtype"] = loader["kv_cache_dtype"]
    return toolkit.load(os.fspath(name), **kw), True


def check(path, model=None, threads=None):
    """Re-runs the probe of the manifest at `path` and compares every field.

    model: None (load what the manifest names), a path or name to load instead, or an already
    loaded toolkit.Model / plugin. threads: engine threads for the re-run (results must not depend
    on it). Returns a CheckResult: truthy when the result reproduces; `.summary()` says why not."""
    from toolkit.core.engine import backend

    manifest = load_manifest(path)
    old_threads = backend.get_threads()
    if threads is not None:
        backend.set_threads(threads)
    m, opened = None, False
    try:
        m, opened = _open_for_check(manifest, model)
        now = _compare(manifest, m)
    finally:
        if opened and m is not None:
            (getattr(m, "close", None) or getattr(m, "cleanup"))()
        if threads is not None:
            backend.set_threads(old_threads)
    return now


def _compare(manifest, model):
    plugin, _, tok = _parts(model)
    diffs = []

    def note(name, recorded, now, fatal):
        if recorded != now:
            diffs.append(Difference(name, recorded, now, fatal))

    path = _model_path(plugin)
    note("model.sha256", manifest["model"].get("sha256"), model_sha256(path), True)
    note("tokenizer.sha256", manifest["tokenizer"].get("sha256"), tokenizer_sha256(tok), True)
    note("tokenizer.chat_template_sha256", manifest["tokenizer"].get("chat_template_sha256"),
         _text_sha256(getattr(tok, "chat_template", None)), True)
    rec = manifest["probe"]
    ids = rec.get("token_ids")
    if not isinstance(ids, list) or not ids:
        raise errors.FormatError("the manifest's probe has no token ids")
    note("probe.token_ids (tokenizing the probe prompt)", ids, tok.encode(rec.get("prompt", "")), True)

    env = {"engine": _engine_info(), "cpu": cpu_info(), "toolkit": {"git": _git_info()}}
    for name, recorded, now in (
            ("engine.threads", manifest["engine"].get("threads"), env["engine"]["threads"]),
            ("engine.simd", manifest["engine"].get("simd"), env["engine"]["simd"]),
            ("engine.build_info", _build_flags(manifest["engine"].get("build_info")),
             _build_flags(env["engine"]["build_info"])),
            ("engine.q4_path", manifest["engine"].get("q4_path"), env["engine"].get("q4_path")),
            ("engine.version", manifest["engine"].get("version"), env["engine"]["version"]),
            ("cpu.flags", (manifest.get("cpu") or {}).get("flags"), env["cpu"]["flags"]),
            ("toolkit.git.commit", ((manifest.get("toolkit") or {}).get("git") or {}).get("commit"),
             (env["toolkit"]["git"] or {}).get("commit"))):
        note(name, recorded, now, False)

    now = probe(model, prompt=rec.get("prompt", ""), ids=ids)
    level, max_diff = "exact", None
    if now["logits_sha256"] != rec.get("logits_sha256"):
        same_kernels = _kernel_key(manifest) == _kernel_key(env)
        max_diff = _max_sample_diff(rec, now)
        close = (max_diff is not None and max_diff <= PROBE_ATOL and now["argmax"] == rec.get("argmax"))
        if close and not same_kernels:
            level = "close"
            diffs.append(Difference("probe.logits_sha256", rec.get("logits_sha256"), now["logits_sha256"], False))
        else:
            why = "probe.logits_sha256" if same_kernels else "probe.logits (beyond tolerance)"
            diffs.append(Difference(why, rec.get("logits_sha256"), now["logits_sha256"], True))
            if now["argmax"] != rec.get("argmax"):
                diffs.append(Difference("probe.argmax", rec.get("argmax"), now["argmax"], True))
    ok = not any(d.fatal for d in diffs)
    if not ok:
        level = "differs"
    return CheckResult(ok=ok, level=level, differences=diffs, max_abs_diff=max_diff, manifest=manifest)


def _max_sample_diff(rec, now):
    if rec.get("sample_ids") != now["sample_ids"] or rec.get("shape") != now["shape"]:
        return None
    try:
        return max(abs(a - b) for ra, rb in zip(rec["samples"], now["samples"]) for a, b in zip(ra, rb))
    except (TypeError, ValueError, KeyError):
        return None  # a damaged samples field cannot vouch for closeness
