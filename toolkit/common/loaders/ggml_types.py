"""The ggml tensor types: id, name, block size and bytes per block.

This table is what lets the GGUF reader compute and check every tensor's byte size, including types
the engine cannot compute with. It only describes storage; it must not decode or dequantize anything
(that belongs to the C engine). Values are from ggml.h / ggml.c (``type_traits``).
"""

from __future__ import annotations

from dataclasses import dataclass

from toolkit.errors import FormatError, UnsupportedError


@dataclass(frozen=True, slots=True)
class GGMLType:
    id: int
    name: str
    block_size: int  # elements per block (1 for plain scalar types)
    type_size: int  # bytes per block


# Ids 4 and 5 (Q4_2, Q4_3) were removed from ggml before GGUF existed; 31-33 and 36-38 are the
# repacked Q4_0/IQ4_NL layouts that ggml dropped later but that older files may still hold.
_TYPES = [
    GGMLType(0, "F32", 1, 4),
    GGMLType(1, "F16", 1, 2),
    GGMLType(2, "Q4_0", 32, 18),
    GGMLType(3, "Q4_1", 32, 20),
    GGMLType(6, "Q5_0", 32, 22),
    GGMLType(7, "Q5_1", 32, 24),
    GGMLType(8, "Q8_0", 32, 34),
    GGMLType(9, "Q8_1", 32, 36),
    GGMLType(10, "Q2_K", 256, 84),
    GGMLType(11, "Q3_K", 256, 110),
    GGMLType(12, "Q4_K", 256, 144),
    GGMLType(13, "Q5_K", 256, 176),
    GGMLType(14, "Q6_K", 256, 210),
    GGMLType(15, "Q8_K", 256, 292),
    GGMLType(16, "IQ2_XXS", 256, 66),
    GGMLType(17, "IQ2_XS", 256, 74),
    GGMLType(18, "IQ3_XXS", 256, 98),
    GGMLType(19, "IQ1_S", 256, 50),
    GGMLType(20, "IQ4_NL", 32, 18),
    GGMLType(21, "IQ3_S", 256, 110),
    GGMLType(22, "IQ2_S", 256, 82),
    GGMLType(23, "IQ4_XS", 256, 136),
    GGMLType(24, "I8", 1, 1),
    GGMLType(25, "I16", 1, 2),
    GGMLType(26, "I32", 1, 4),
    GGMLType(27, "I64", 1, 8),
    GGMLType(28, "F64", 1, 8),
    GGMLType(29, "IQ1_M", 256, 56),
    GGMLType(30, "BF16", 1, 2),
    GGMLType(31, "Q4_0_4_4", 32, 18),
    GGMLType(32, "Q4_0_4_8", 32, 18),
    GGMLType(33, "Q4_0_8_8", 32, 18),
    GGMLType(34, "TQ1_0", 256, 54),
    GGMLType(35, "TQ2_0", 256, 66),
    GGMLType(36, "IQ4_NL_4_4", 32, 18),
    GGMLType(37, "IQ4_NL_4_8", 32, 18),
    GGMLType(38, "IQ4_NL_8_8", 32, 18),
    GGMLType(39, "MXFP4", 32, 17),
]

GGML_TYPES: dict[int, GGMLType] = {t.id: t for t in _TYPES}
GGML_TYPE_IDS: dict[str, int] = {t.name: t.id for t in _TYPES}


def ggml_type(type_id: int) -> GGMLType:
    """The table entry for ``type_id``; UnsupportedError for an id this toolkit does not know."""
    try:
        return GGML_TYPES[type_id]
    except KeyError:
        raise UnsupportedError(
            f"ggml tensor type id {type_id} is unknown to this toolkit (a newer ggml type?)"
        ) from None


def tensor_nbytes(type_id: int, shape: tuple[int, ...]) -> int:
    """Bytes taken by a tensor of ``shape`` (GGUF order, ne[0] first) stored as ``type_id``.

    Blocks run along ne[0] only, so ne[0] must be a multiple of the block size.
    """
    t = ggml_type(type_id)
    n = 1
    for d in shape:
        n *= d
    if shape and shape[0] % t.block_size:
        raise FormatError(
            f"{t.name} stores blocks of {t.block_size} elements but ne[0] = {shape[0]} "
            "is not a multiple of that"
        )
    return n // t.block_size * t.type_size
