"""Read GGUF v2/v3 files (llama.cpp's weight format) in pure Python over a copy-on-write mmap.

``GGUFFile`` parses the header, metadata and tensor table, checks every size and offset against the
file, and hands out tensor data as zero-copy ``memoryview`` slices of the mapping. It never copies
or decodes tensor data; dequantization and compute belong to the C engine.

Lifetime: ``close()`` releases the mapping only when no view of it is alive. Views returned by
``tensor_bytes`` (and cffi pointers made from them) keep it alive: release them (``view.release()``,
``ffi.release(ptr)``) before closing. If some are still alive at ``close()``, the mapping stays
valid until the last one goes away and a ResourceWarning says so, so a C pointer can never dangle.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from toolkit.common.loaders.ggml_types import ggml_type, tensor_nbytes
from toolkit.common.loaders.mapped import MappedFile
from toolkit.errors import ClosedError, FormatError, UnsupportedError

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
# Nested arrays are legal but real files use at most arrays of scalars or strings; a bound keeps a
# hostile file from exhausting the Python stack.
MAX_ARRAY_NESTING = 8

SUPPORTED = frozenset({"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1"})


class GGUFValueType(IntEnum):
    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


# struct codes of the fixed-size value types
SCALAR_FORMATS = {
    GGUFValueType.UINT8: "B",
    GGUFValueType.INT8: "b",
    GGUFValueType.UINT16: "H",
    GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I",
    GGUFValueType.INT32: "i",
    GGUFValueType.FLOAT32: "f",
    GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "Q",
    GGUFValueType.INT64: "q",
    GGUFValueType.FLOAT64: "d",
}

# Smallest possible encodings, used to reject counts that cannot fit in the file before looping.
_MIN_STRING = 8  # u64 length, empty text
_MIN_KV = _MIN_STRING + 4 + 1  # key, value type, one-byte value
_MIN_TENSOR_INFO = _MIN_STRING + 4 + 4 + 8  # name, n_dims (0), type, offset
_U64 = struct.Struct("<Q")


@dataclass(frozen=True, slots=True)
class GGUFTensorInfo:
    name: str
    ggml_type: int
    type_name: str
    shape: tuple[int, ...]  # GGUF order: ne[0] (innermost, contiguous) first
    offset: int  # absolute position of the first byte in the file
    nbytes: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


class _Reader:
    """Bounds-checked little-endian cursor over the mapping; every failure names file and offset."""

    def __init__(self, buf: mmap.mmap, path: str):
        self.buf = buf
        self.path = path
        self.size = len(buf)
        self.pos = 0

    def fail(self, what: str) -> FormatError:
        return FormatError(f"{self.path}: {what} (at byte {self.pos} of {self.size})")

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(f"truncated: {what} needs {n} bytes past the end of the file")

    def scalar(self, fmt: str, what: str) -> Any:
        n = struct.calcsize("<" + fmt)
        self.need(n, what)
        (v,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += n
        return v

    def string(self, what: str) -> str:
        n = self.scalar("Q", f"length of {what}")
        self.need(n, what)
        raw = self.buf[self.pos : self.pos + n]
        try:
            s = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.fail(f"{what} is not valid UTF-8 ({e.reason} at byte {e.start})") from None
        self.pos += n
        return s

    def value(self, vtype: int, what: str, depth: int = 0) -> Any:
        if vtype == GGUFValueType.STRING:
            return self.string(what)
        if vtype == GGUFValueType.ARRAY:
            return self.array(what, depth + 1)
        fmt = SCALAR_FORMATS.get(vtype)
        if fmt is None:
            raise self.fail(f"{what} has unknown value type {vtype}")
        return self.scalar(fmt, what)

    def array(self, what: str, depth: int) -> list:
        if depth > MAX_ARRAY_NESTING:
            raise self.fail(f"{what} nests arrays more than {MAX_ARRAY_NESTING} deep")
        etype = self.scalar("I", f"element type of {what}")
        count = self.scalar("Q", f"element count of {what}")
        fmt = SCALAR_FORMATS.get(etype)
        if fmt is not None:
            # Bulk unpack: token score/type arrays have tens of thousands of entries.
            n = struct.calcsize("<" + fmt) * count
            self.need(n, f"{count} elements of {what}")
            items = list(struct.unpack_from(f"<{count}{fmt}", self.buf, self.pos))
            self.pos += n
            return items
        if etype == GGUFValueType.STRING:
            min_size = _MIN_STRING
        elif etype == GGUFValueType.ARRAY:
            min_size = 4 + 8
        else:
            raise self.fail(f"{what} has unknown element type {etype}")
        if count * min_size > self.size - self.pos:
            raise self.fail(f"{what} claims {count} elements, more than the rest of the file holds")
        if etype == GGUFValueType.STRING:
            return self.strings(count, what)
        return [self.value(etype, f"{what}[{i}]", depth) for i in range(count)]

    def strings(self, count: int, what: str) -> list[str]:
        # The vocabulary arrays hold ~100k strings; this loop is the reader's hot spot, hence the
        # hoisted locals instead of calling string() per item.
        buf, pos, size = self.buf, self.pos, self.size
        unpack_len = _U64.unpack_from
        out = []
        for i in range(count):
            if pos + 8 > size:
                self.pos = pos
                raise self.fail(f"truncated: length of {what}[{i}] runs past the end of the file")
            (n,) = unpack_len(buf, pos)
            pos += 8
            if pos + n > size:
                self.pos = pos
                raise self.fail(f"truncated: {what}[{i}] ({n} bytes) runs past the end of the file")
            try:
                out.append(str(buf[pos : pos + n], "utf-8"))
            except UnicodeDecodeError as e:
                self.pos = pos
                raise self.fail(f"{what}[{i}] is not valid UTF-8 ({e.reason})") from None
            pos += n
        self.pos = pos
        return out


class GGUFFile(MappedFile):
    """A parsed, validated GGUF file; tensor data stays in the (copy-on-write) mapping."""

    def __init__(self, path: str | os.PathLike):
        f, size = self._open(path, 4 + 4 + 8 + 8, "GGUF header")
        with f:
            # The mapping keeps its own duplicate of the descriptor, so the file can close now.
            # Copy-on-write: a model whose weights a user edits in place (ablations) gets private
            # copies of the pages it writes, where a read-only mapping would crash the process;
            # the file never changes and untouched pages stay shared with the page cache.
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        try:
            self._parse(mm)
        except BaseException:
            mm.close()
            raise
        self._adopt(mm)

    def _parse(self, mm: mmap.mmap) -> None:
        r = _Reader(mm, self.path)
        magic = bytes(mm[0:4])
        if magic != GGUF_MAGIC:
            raise FormatError(f"{self.path}: not a GGUF file (magic {magic!r}, expected b'GGUF')")
        r.pos = 4
        version = r.scalar("I", "version")
        if version == 1:
            raise UnsupportedError(f"{self.path}: GGUF version 1 is not supported (only 2 and 3)")
        if version not in (2, 3):
            if struct.unpack(">I", struct.pack("<I", version))[0] in (2, 3):
                raise UnsupportedError(f"{self.path}: big-endian GGUF files are not supported")
            raise FormatError(f"{self.path}: unknown GGUF version {version}")
        self.version = version
        n_tensors = r.scalar("Q", "tensor count")
        n_kv = r.scalar("Q", "metadata count")
        rest = r.size - r.pos
        if n_kv * _MIN_KV > rest or n_tensors * _MIN_TENSOR_INFO > rest:
            raise r.fail(
                f"header claims {n_tensors} tensors and {n_kv} metadata entries, "
                "more than the file can hold"
            )

        self.metadata: dict[str, Any] = {}
        self.metadata_types: dict[str, int] = {}
        for _ in range(n_kv):
            key = r.string("metadata key")
            if key in self.metadata:
                raise r.fail(f"metadata key {key!r} appears twice")
            vtype = r.scalar("I", f"value type of {key!r}")
            self.metadata[key] = r.value(vtype, f"metadata {key!r}")
            self.metadata_types[key] = vtype

        self.alignment = self._read_alignment()
        infos = [self._read_tensor_info(r) for _ in range(n_tensors)]

        self.data_offset = -(-r.pos // self.alignment) * self.alignment
        if n_tensors and self.data_offset > r.size:
            raise r.fail("tensor data section starts past the end of the file")
        self.tensors: dict[str, GGUFTensorInfo] = {}
        for name, shape, type_id, rel in infos:
            if name in self.tensors:
                raise FormatError(f"{self.path}: tensor {name!r} appears twice")
            if rel % self.alignment:
                raise FormatError(
                    f"{self.path}: tensor {name!r} data offset {rel} is not a multiple of the "
                    f"alignment {self.alignment}"
                )
            try:
                nbytes = tensor_nbytes(type_id, shape)
            except FormatError as e:
                raise FormatError(f"{self.path}: tensor {name!r}: {e}") from None
            start = self.data_offset + rel
            if start + nbytes > r.size:
                raise FormatError(
                    f"{self.path}: tensor {name!r} ({nbytes} bytes at {start}) runs past the end "
                    f"of the file ({r.size} bytes); the file is truncated or corrupt"
                )
            self.tensors[name] = GGUFTensorInfo(
                name, type_id, ggml_type(type_id).name, shape, start, nbytes
            )
        self._check_overlaps()
        self._check_layout(infos)
        self.file_size = r.size

    def _read_alignment(self) -> int:
        if "general.alignment" not in self.metadata:
            return DEFAULT_ALIGNMENT
        a = self.metadata["general.alignment"]
        if self.metadata_types["general.alignment"] != GGUFValueType.UINT32:
            raise FormatError(f"{self.path}: general.alignment must be a uint32")
        if a <= 0 or a & (a - 1):
            raise FormatError(f"{self.path}: general.alignment {a} is not a power of two")
        return a

    def _read_tensor_info(self, r: _Reader) -> tuple[str, tuple[int, ...], int, int]:
        name = r.string("tensor name")
        n_dims = r.scalar("I", f"dimension count of tensor {name!r}")
        if n_dims > MAX_DIMS:
            raise r.fail(f"tensor {name!r} has {n_dims} dimensions; ggml allows at most {MAX_DIMS}")
        shape = tuple(r.scalar("Q", f"dimensions of tensor {name!r}") for _ in range(n_dims))
        n = 1
        for d in shape:
            n *= d
        if n >= 2**63:
            raise r.fail(f"tensor {name!r} shape {shape} overflows int64")
        type_id = r.scalar("I", f"type of tensor {name!r}")
        try:
            ggml_type(type_id)
        except UnsupportedError as e:
            raise UnsupportedError(f"{self.path}: tensor {name!r}: {e}") from None
        rel = r.scalar("Q", f"data offset of tensor {name!r}")
        return name, shape, type_id, rel

    def _check_layout(self, infos) -> None:
        # As ggml's reader: tensor data follows the table's order, each tensor padded to the
        # alignment, with no gaps. An offset anywhere else means the table and the data disagree.
        expected = 0
        for name, *_ , rel in infos:
            if rel != expected:
                raise FormatError(
                    f"{self.path}: tensor {name!r} has data offset {rel}, expected {expected} (GGUF "
                    f"stores tensor data in table order, each padded to {self.alignment} bytes)")
            n = self.tensors[name].nbytes
            expected += -(-n // self.alignment) * self.alignment

    def _check_overlaps(self) -> None:
        spans = sorted(self.tensors.values(), key=lambda t: t.offset)
        for a, b in zip(spans, spans[1:]):
            if a.offset + a.nbytes > b.offset and a.nbytes and b.nbytes:
                raise FormatError(
                    f"{self.path}: tensors {a.name!r} and {b.name!r} overlap "
                    f"([{a.offset}, {a.offset + a.nbytes}) and [{b.offset}, {b.offset + b.nbytes}))"
                )

    def tensor_bytes(self, name: str, writable: bool = False) -> memoryview:
        """The raw bytes of tensor ``name``: a zero-copy slice of the mapping, read-only unless
        ``writable`` (writes go to this process's private copy of the page, never to the file).

        Release it (``.release()``) when done, or ``close()`` cannot unmap the file.
        """
        if self._view is None:
            raise ClosedError(f"{self.path}: GGUF file is closed")
        info = self.tensors.get(name)
        if info is None:
            raise FormatError(f"{self.path}: no tensor named {name!r}")
        return self._data(writable)[info.offset : info.offset + info.nbytes]

    def check_supported(self, name: str) -> GGUFTensorInfo:
        """Return the info of tensor ``name``; UnsupportedError if its type is outside SUPPORTED."""
        info = self.tensors.get(name)
        if info is None:
            raise FormatError(f"{self.path}: no tensor named {name!r}")
        if info.type_name not in SUPPORTED:
            raise UnsupportedError(
                f"{self.path}: tensor {name!r} is stored as {info.type_name}; this toolkit "
                f"computes with {', '.join(sorted(SUPPORTED))} only"
            )
        return info

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self.tensors)} tensors"
        return f"GGUFFile({self.path!r}, v{getattr(self, 'version', '?')}, {state})"
