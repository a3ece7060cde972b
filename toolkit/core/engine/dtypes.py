"""Dtype names <-> engine codes, and the facts Python needs about each dtype."""
import sys

from toolkit import errors
from ._lib import lib

CODES = {
    "F32": lib.CE_F32, "F16": lib.CE_F16, "BF16": lib.CE_BF16,
    "Q8_0": lib.CE_Q8_0, "Q4_0": lib.CE_Q4_0, "Q4_1": lib.CE_Q4_1, "I32": lib.CE_I32,
}
NAMES = {v: k for k, v in CODES.items()}
BLOCK_DTYPES = frozenset({"Q8_0", "Q4_0", "Q4_1"})
FLOAT_DTYPES = frozenset({"F32", "F16", "BF16"})
# struct / memoryview format per element, for the buffer protocol (BF16 shows as raw uint16)
# (memoryview.cast learned "e" only in Python 3.12; before that F16 shows as raw uint16 too)
FORMATS = {"F32": "f", "F16": "e" if sys.version_info >= (3, 12) else "H", "BF16": "H", "I32": "i"}
TYPESTR = {"F32": "<f4", "F16": "<f2", "BF16": "<u2", "I32": "<i4"}


def code(dtype):
    """Engine code for a dtype name (case-insensitive), raising DTypeError for unknown names."""
    if isinstance(dtype, str):
        c = CODES.get(dtype.upper())
        if c is not None:
            return c
    raise errors.DTypeError(f"unknown dtype {dtype!r}; expected one of {', '.join(CODES)}")


def row_bytes(dtype, n):
    c = code(dtype)
    if dtype.upper() in BLOCK_DTYPES:
        if n % 32:
            raise errors.ShapeError(f"{dtype} rows need a multiple of 32 elements, got {n}")
        return n // 32 * lib.ce_dtype_block_bytes(c)
    return n * lib.ce_dtype_block_bytes(c)
