"""Read and write safetensors files in pure Python: mmap for reading, streaming for writing.

The ``safetensors`` package cannot open files without numpy or torch (``safe_open`` needs a
framework), and this project uses neither, so the format is parsed here: an 8-byte little-endian
header length, a JSON header, then the raw data. Reading is zero-copy (``memoryview`` slices of a
copy-on-write mapping, read-only unless asked for writable ones; release them before ``close()``, see ``GGUFFile`` for the same rule). Writing
streams each buffer to a temporary file that is renamed into place only when complete.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Iterator

from toolkit.common.atomic import atomic_write
from toolkit.common.loaders.mapped import MappedFile
from toolkit.errors import (
    ArgumentTypeError,
    ClosedError,
    FormatError,
    ModelNotFoundError,
    ShapeError,
)

# Bits per element of every dtype the format defines (safetensors 0.8 ``Dtype``).
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}  # fmt: skip

# The reference implementation refuses headers above 100 MB; so do we, before reading them.
MAX_HEADER_BYTES = 100_000_000


@dataclass(frozen=True, slots=True)
class SafetensorsTensorInfo:
    name: str
    dtype: str  # header code: "F32", "BF16", "I32", ...
    shape: tuple[int, ...]  # outermost dimension first
    begin: int  # absolute offsets in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def _expected_nbytes(dtype: str, shape: tuple[int, ...]) -> int | None:
    n = DTYPE_BITS[dtype]
    for d in shape:
        n *= d
    return n // 8 if n % 8 == 0 else None


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    # json.loads keeps the last of two equal keys silently; a header with duplicates is corrupt.
    d = {}
    for k, v in pairs:
        if k in d:
            raise FormatError(f"duplicate key {k!r}")
        d[k] = v
    return d


class SafetensorsFile(MappedFile):
    """One parsed, validated safetensors file with its data left in a copy-on-write mapping."""

    def __init__(self, path: str | os.PathLike):
        f, size = self._open(path, 8, "safetensors file")
        with f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise FormatError(
                    f"{self.path}: header length {n} is impossible for a file of {size} bytes"
                )
            header = f.read(n)
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # copy-on-write: see GGUFFile
        try:
            self._parse(header, 8 + n, size)
        except BaseException:
            mm.close()
            raise
        self._adopt(mm)

    def _parse(self, header: bytes, data_start: int, size: int) -> None:
        try:
            hdr = json.loads(header.decode("utf-8"), object_pairs_hook=_reject_duplicates)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise FormatError(f"{self.path}: header is not valid UTF-8 JSON ({e})") from None
        except RecursionError:
            # json's C scanner recurses per nesting level; a valid header nests 3 deep.
            raise FormatError(f"{self.path}: header JSON nests too deeply") from None
        except FormatError as e:
            raise FormatError(f"{self.path}: header has a {e}") from None
        if not isinstance(hdr, dict):
            raise FormatError(f"{self.path}: header is a JSON {type(hdr).__name__}, not an object")
        meta = hdr.pop("__metadata__", None) or {}
        if not isinstance(meta, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
        ):
            raise FormatError(f"{self.path}: __metadata__ must map strings to strings")
        self.metadata: dict[str, str] = meta
        self.data_offset = data_start
        self.tensors: dict[str, SafetensorsTensorInfo] = {}
        for name, entry in hdr.items():
            self.tensors[name] = self._tensor_info(name, entry, data_start, size)
        self._check_coverage(size)

    def _check_coverage(self, size: int) -> None:
        # As the reference parser: the tensors must tile the data area exactly. A gap, an overlap
        # or trailing bytes means the header and the data disagree (a header length one byte short
        # would otherwise shift every tensor by a byte and load as garbage).
        pos, prev = self.data_offset, None
        for t in sorted(self.tensors.values(), key=lambda t: (t.begin, t.end)):
            if t.begin < pos:
                raise FormatError(f"{self.path}: tensors {prev!r} and {t.name!r} overlap")
            if t.begin > pos:
                after = f"tensor {prev!r}" if prev is not None else "the header"
                raise FormatError(
                    f"{self.path}: {t.begin - pos} bytes between {after} and tensor {t.name!r} "
                    "belong to no tensor (invalid offset); the file is corrupt")
            pos, prev = t.end, t.name
        if pos != size:
            raise FormatError(
                f"{self.path}: the tensors cover {pos - self.data_offset} bytes of a data area of "
                f"{size - self.data_offset}; the file is not fully covered (corrupt or truncated)")

    def _tensor_info(self, name: str, e: Any, data_start: int, size: int) -> SafetensorsTensorInfo:
        where = f"{self.path}: tensor {name!r}"
        if not isinstance(e, dict):
            raise FormatError(f"{where}: entry is not a JSON object")
        dtype, shape, offsets = e.get("dtype"), e.get("shape"), e.get("data_offsets")
        if dtype not in DTYPE_BITS:
            raise FormatError(f"{where}: unknown dtype {dtype!r}")

        def is_count(x: Any) -> bool:
            return isinstance(x, int) and not isinstance(x, bool) and x >= 0

        if not isinstance(shape, list) or not all(is_count(d) for d in shape):
            raise FormatError(f"{where}: shape {shape!r} is not a list of non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(is_count, offsets))):
            raise FormatError(f"{where}: data_offsets {offsets!r} is not [begin, end]")
        begin, end = offsets
        if begin > end or data_start + end > size:
            raise FormatError(
                f"{where}: data_offsets [{begin}, {end}] lie outside the data area "
                f"(0 .. {size - data_start})"
            )
        shape = tuple(shape)
        expected = _expected_nbytes(dtype, shape)
        if expected != end - begin:
            raise FormatError(
                f"{where}: {dtype} {shape} needs {expected} bytes but data_offsets span "
                f"{end - begin}"
            )
        return SafetensorsTensorInfo(name, dtype, shape, data_start + begin, data_start + end)

    def tensor_bytes(self, name: str, writable: bool = False) -> memoryview:
        """Zero-copy bytes of tensor ``name``, read-only unless ``writable`` (writes stay in this
        process: the mapping is copy-on-write); release the view before ``close()``."""
        if self._view is None:
            raise ClosedError(f"{self.path}: safetensors file is closed")
        info = self.tensors.get(name)
        if info is None:
            raise FormatError(f"{self.path}: no tensor named {name!r}")
        return self._data(writable)[info.begin : info.end]

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self.tensors)} tensors"
        return f"SafetensorsFile({self.path!r}, {state})"


class SafetensorsDir(Mapping):
    """Tensor name -> (SafetensorsFile, info) over one file or all shards; owns the files."""

    def __init__(self, files: list[SafetensorsFile], entries: dict[str, tuple]):
        self.files = files
        self._entries = entries

    def __getitem__(self, name: str) -> tuple[SafetensorsFile, SafetensorsTensorInfo]:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def tensor_bytes(self, name: str, writable: bool = False) -> memoryview:
        if name not in self._entries:
            raise FormatError(f"no tensor named {name!r} in {[f.path for f in self.files]}")
        f, _ = self._entries[name]
        return f.tensor_bytes(name, writable)

    def close(self) -> None:
        for f in self.files:
            f.close()

    def __enter__(self) -> SafetensorsDir:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_safetensors_dir(directory: str | os.PathLike) -> SafetensorsDir:
    """Open ``model.safetensors`` or the shards named by ``model.safetensors.index.json``."""
    directory = os.fspath(directory)
    single = os.path.join(directory, "model.safetensors")
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.isfile(index):
        return _open_sharded(directory, index)
    if os.path.isfile(single):
        f = SafetensorsFile(single)
        return SafetensorsDir([f], {name: (f, info) for name, info in f.tensors.items()})
    raise ModelNotFoundError(
        f"{directory}: neither model.safetensors nor model.safetensors.index.json"
    )


def _open_sharded(directory: str, index: str) -> SafetensorsDir:
    try:
        with open(index, encoding="utf-8") as fh:
            weight_map = json.load(fh)["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise FormatError(f"{index}: not a safetensors index with a weight_map ({e!r})") from None
    if not isinstance(weight_map, dict):
        raise FormatError(f"{index}: weight_map is not an object")
    shards: dict[str, SafetensorsFile] = {}
    entries: dict[str, tuple] = {}
    try:
        for name, shard in weight_map.items():
            # Shard names are plain file names; anything else could point outside the model.
            plain = isinstance(shard, str) and os.path.basename(shard) == shard
            if not plain or shard in ("", ".", ".."):
                raise FormatError(
                    f"{index}: tensor {name!r} names shard {shard!r}, not a file name"
                )
            if shard not in shards:
                shard_path = os.path.join(directory, shard)
                if not os.path.isfile(shard_path):
                    raise FormatError(f"{index}: shard {shard} (for {name!r}) is missing")
                shards[shard] = SafetensorsFile(shard_path)
            f = shards[shard]
            if name not in f.tensors:
                raise FormatError(f"{index}: tensor {name!r} is not in shard {shard}")
            entries[name] = (f, f.tensors[name])
    except BaseException:
        for f in shards.values():
            f.close()
        raise
    return SafetensorsDir(list(shards.values()), entries)


def save_safetensors(
    path: str | os.PathLike,
    tensors: Mapping[str, tuple[str, tuple[int, ...], Any]],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write ``tensors`` (name -> (dtype code, shape, bytes-like)) to ``path`` atomically.

    Tensors are laid out largest element size first, then by name (as the reference writer does),
    so with the header padded to 8 bytes every tensor starts aligned to its element size.
    """
    if metadata is not None and not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise ArgumentTypeError("safetensors metadata must map str to str")
    prepared = []
    for name, spec in tensors.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise ArgumentTypeError(f"tensor name {name!r} is not allowed")
        dtype, shape, data = spec
        if dtype not in DTYPE_BITS:
            raise ArgumentTypeError(f"tensor {name!r}: unknown dtype {dtype!r}")
        shape = tuple(int(d) for d in shape)
        view = memoryview(data).cast("B")
        expected = _expected_nbytes(dtype, shape)
        if expected != len(view):
            raise ShapeError(
                f"tensor {name!r}: {dtype} {shape} needs {expected} bytes, buffer has {len(view)}"
            )
        prepared.append((name, dtype, shape, view))
    prepared.sort(key=lambda t: (-DTYPE_BITS[t[1]], t[0]))

    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, dtype, shape, view in prepared:
        end = offset + len(view)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, end]}
        offset = end
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with atomic_write(path) as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for *_, view in prepared:
            f.write(view)
