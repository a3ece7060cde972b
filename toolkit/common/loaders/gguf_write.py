"""Write GGUF v3 files (or their bytes) from metadata and already-encoded tensor data.

Used to export small models and by the tests, which build valid files and then damage them. It only
serialises: it never quantizes or converts tensor data, and it checks each tensor's byte size
against its ggml type and shape so it cannot write a file the reader would reject.
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from typing import Any, BinaryIO, Mapping

from toolkit.common.atomic import atomic_write
from toolkit.common.loaders.ggml_types import tensor_nbytes
from toolkit.common.loaders.gguf import DEFAULT_ALIGNMENT, GGUF_MAGIC, SCALAR_FORMATS, GGUFValueType
from toolkit.errors import ArgumentTypeError, ShapeError


@dataclass(frozen=True, slots=True)
class GGUFValue:
    """A metadata value with an explicit GGUF type (for arrays: the element type)."""

    type: GGUFValueType
    value: Any


def _infer(value: Any) -> GGUFValue:
    # Plain Python values get the types llama.cpp's converters use for them.
    if isinstance(value, GGUFValue):
        return value
    if isinstance(value, bool):
        return GGUFValue(GGUFValueType.BOOL, value)
    if isinstance(value, int):
        return GGUFValue(GGUFValueType.UINT32 if 0 <= value < 2**32 else GGUFValueType.INT64, value)
    if isinstance(value, float):
        return GGUFValue(GGUFValueType.FLOAT32, value)
    if isinstance(value, str):
        return GGUFValue(GGUFValueType.STRING, value)
    if isinstance(value, (list, tuple)):
        etype = _infer(value[0]).type if value else GGUFValueType.UINT8
        return GGUFValue(GGUFValueType.ARRAY, GGUFValue(etype, list(value)))
    raise ArgumentTypeError(f"cannot store a {type(value).__name__} in GGUF metadata")


def _write_string(out: BinaryIO, s: str) -> None:
    raw = s.encode("utf-8")
    out.write(struct.pack("<Q", len(raw)))
    out.write(raw)


def _write_value(out: BinaryIO, v: GGUFValue) -> None:
    if v.type == GGUFValueType.STRING:
        _write_string(out, v.value)
    elif v.type == GGUFValueType.ARRAY:
        inner = v.value if isinstance(v.value, GGUFValue) else _infer(v.value).value
        out.write(struct.pack("<IQ", inner.type, len(inner.value)))
        for item in inner.value:
            _write_value(out, item if isinstance(item, GGUFValue) else GGUFValue(inner.type, item))
    else:
        out.write(struct.pack("<" + SCALAR_FORMATS[v.type], v.value))


def write_gguf_stream(
    out: BinaryIO,
    metadata: Mapping[str, Any],
    tensors: Mapping[str, tuple[int, tuple[int, ...], bytes]],
    *,
    alignment: int = DEFAULT_ALIGNMENT,
    version: int = 3,
) -> None:
    """Serialise to ``out``. ``tensors``: name -> (ggml type id, shape with ne[0] first, data)."""
    meta = dict(metadata)
    if alignment != DEFAULT_ALIGNMENT:
        meta["general.alignment"] = GGUFValue(GGUFValueType.UINT32, alignment)
    out.write(GGUF_MAGIC)
    out.write(struct.pack("<IQQ", version, len(tensors), len(meta)))
    for key, value in meta.items():
        v = _infer(value)
        _write_string(out, key)
        out.write(struct.pack("<I", v.type))
        _write_value(out, v)

    offset = 0
    placed = []
    for name, (type_id, shape, data) in tensors.items():
        data = memoryview(data).cast("B")
        expected = tensor_nbytes(type_id, tuple(shape))
        if len(data) != expected:
            raise ShapeError(
                f"tensor {name!r}: {len(data)} bytes given, type {type_id} shape {tuple(shape)} "
                f"needs {expected}"
            )
        _write_string(out, name)
        out.write(struct.pack("<I", len(shape)))
        out.write(struct.pack(f"<{len(shape)}Q", *shape))
        out.write(struct.pack("<IQ", type_id, offset))
        placed.append((offset, data))
        offset += -(-len(data) // alignment) * alignment

    header_end = out.tell()
    data_start = -(-header_end // alignment) * alignment
    out.write(b"\0" * (data_start - header_end))
    for rel, data in placed:
        out.write(b"\0" * (data_start + rel - out.tell()))
        out.write(data)


def gguf_bytes(metadata, tensors, **kw) -> bytes:
    """The complete file as bytes (for tests and small exports)."""
    buf = io.BytesIO()
    write_gguf_stream(buf, metadata, tensors, **kw)
    return buf.getvalue()


def write_gguf(path: str | os.PathLike, metadata, tensors, **kw) -> None:
    """Write the file atomically: readers see the old file or the complete new one."""
    with atomic_write(path) as f:
        write_gguf_stream(f, metadata, tensors, **kw)
