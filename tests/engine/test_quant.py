"""Dtype conversions (cengine/src/quant.c) against pure-Python references.

Quantizers must match ggml's reference quantizers byte for byte (a Python port of
quantize_row_q8_0_ref / q4_0_ref / q4_1_ref below, with every float32 operation rounded as C does);
dequantizers must match the GGUF formulas; F16/BF16 casts must round to nearest even. Also: the
round-trip error bound of each format, SIMD dequantizers against their scalar twins, conversions
between every pair of dtypes, and bad arguments that must fail cleanly.
"""
import math
import random
import struct

import pytest

from toolkit import errors
from toolkit.core.engine import backend as B
from toolkit.core.engine._lib import check, ffi, lib
from toolkit.core.engine.backend import Tensor
from floats import f32

DTYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "I32"]
BLOCK = {"Q8_0": 34, "Q4_0": 18, "Q4_1": 20}


def f16_bytes(x):
    return struct.pack("<e", x)


def f16_val(b):
    return struct.unpack("<e", b)[0]


def rand_list(n, seed, lo=-2.0, hi=2.0):
    r = random.Random(seed)
    return [f32(r.uniform(lo, hi)) for _ in range(n)]


def roundf(v):  # C roundf: halves away from zero
    return math.copysign(math.floor(abs(v) + 0.5), v)


# ---- Python port of ggml's reference quantizers (each f32 op rounded to f32, no FMA) ----
def ref_q8_0(x):
    out = b""
    for i in range(0, len(x), 32):
        blk = x[i:i + 32]
        amax = max(abs(v) for v in blk)
        d = f32(amax / 127)
        inv = f32(1.0 / d) if d else 0.0
        out += f16_bytes(d) + bytes(int(roundf(f32(v * inv))) & 0xFF for v in blk)
    return out


def ref_q4_0(x):
    out = b""
    for i in range(0, len(x), 32):
        blk = x[i:i + 32]
        amax, mx = 0.0, 0.0
        for v in blk:
            if amax < abs(v):
                amax, mx = abs(v), v
        d = f32(mx / -8)
        inv = f32(1.0 / d) if d else 0.0
        q = [min(15, int(f32(f32(v * inv) + 8.5))) for v in blk]
        out += f16_bytes(d) + bytes(q[j] | (q[j + 16] << 4) for j in range(16))
    return out


def ref_q4_1(x):
    out = b""
    for i in range(0, len(x), 32):
        blk = x[i:i + 32]
        mn, mx = min(blk), max(blk)
        d = f32(f32(mx - mn) / 15)
        inv = f32(1.0 / d) if d else 0.0
        q = [min(15, int(f32(f32(f32(v - mn) * inv) + 0.5))) for v in blk]
        out += f16_bytes(d) + f16_bytes(mn) + bytes(q[j] | (q[j + 16] << 4) for j in range(16))
    return out


REF_QUANT = {"Q8_0": ref_q8_0, "Q4_0": ref_q4_0, "Q4_1": ref_q4_1}


def ref_dequant(dtype, raw):
    """GGUF block bytes -> floats (float64 arithmetic of the f32/f16 parts; exact here)."""
    out = []
    bb = BLOCK[dtype]
    for o in range(0, len(raw), bb):
        blk = raw[o:o + bb]
        d = f16_val(blk[0:2])
        if dtype == "Q8_0":
            out += [f32(d * q) for q in struct.unpack("<32b", blk[2:34])]
        elif dtype == "Q4_0":
            qs = blk[2:18]
            out += [f32((b & 15) - 8) * d for b in qs] + [f32((b >> 4) - 8) * d for b in qs]
            out[-32:] = [f32(v) for v in out[-32:]]
        else:
            m = f16_val(blk[2:4])
            qs = blk[4:20]
            out += [f32(f32((b & 15) * d) + m) for b in qs] + [f32(f32((b >> 4) * d) + m) for b in qs]
    return out


def bf16_ref(x):
    """float -> bf16 bits, nearest even (nan stays nan)."""
    u = struct.unpack("<I", struct.pack("<f", x))[0]
    if (u & 0x7FFFFFFF) > 0x7F800000:
        return (u >> 16) | 0x40
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF


def bf16_val(h):
    return struct.unpack("<f", struct.pack("<I", h << 16))[0]


def raw(t):
    return ffi.buffer(t.ptr.data, t.nbytes)[:]


def convert(dst_dtype, src_tensor, n=None):
    """ce_convert of a whole tensor into a new buffer; returns the raw bytes."""
    n = src_tensor.numel if n is None else n
    code = getattr(lib, "CE_" + dst_dtype)
    nbytes = ffi.new("int64_t *")
    check(lib.ce_row_bytes(code, n, nbytes))
    buf = ffi.new("char[]", max(1, nbytes[0]))
    check(lib.ce_convert(code, buf, src_tensor.ptr.dtype, src_tensor.ptr.data, n))
    return ffi.buffer(buf, nbytes[0])[:]


def special_blocks():
    """Blocks that stress the quantizers: zeros, constants, one outlier, negative max, ties."""
    r = random.Random(7)
    blocks = [
        [0.0] * 32,
        [1.5] * 32,
        [-3.25] * 32,
        [0.0] * 31 + [5.0],
        [0.0] * 31 + [-5.0],
        [f32(-1.0 + j / 16) for j in range(32)],
        [float(j - 16) for j in range(32)],            # integers: many exact x*id ties
        [f32(j * 0.5) for j in range(32)],
        [f32(r.gauss(0, 1)) for _ in range(32)],
        [f32(r.uniform(-1e-3, 1e-3)) for _ in range(32)],
        [f32(r.uniform(-300, 300)) for _ in range(32)],
        [f32(1e-6 * (j % 3 - 1)) for j in range(32)],  # f16 subnormal scales
        [2.0] + [-2.0] * 31,                            # tie in |max|: the first one wins
        [-2.0] + [2.0] * 31,
    ]
    return [v for b in blocks for v in b]


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["Q8_0", "Q4_0", "Q4_1"])
def test_quantize_is_bit_exact_to_ggml_reference(dtype):
    x = special_blocks() + rand_list(32 * 6, 11, -4, 4)
    for simd in (False, True):
        B.set_simd(simd)
        assert raw(Tensor.from_list(x, (len(x),), dtype)) == REF_QUANT[dtype](x)


@pytest.mark.parametrize("dtype", ["Q8_0", "Q4_0", "Q4_1"])
@pytest.mark.parametrize("k", [32, 64, 96, 576, 1536])
def test_dequantize_matches_reference_and_error_bound(dtype, k):
    x = rand_list(k, k, -3, 3)
    t = Tensor.from_list(x, (k,), dtype)
    want = ref_dequant(dtype, raw(t))
    B.set_simd(False)
    scalar = t.to_list()
    B.set_simd(True)
    simd = t.to_list()
    assert scalar == want
    if dtype == "Q4_1":  # SIMD fuses d*q + m into one FMA: at most one rounding apart
        for s, w in zip(simd, want):
            assert abs(s - w) <= 2 ** -22 * max(abs(w), 1e-30) + 1e-30
    else:
        assert simd == want
    data = raw(t)
    bb = BLOCK[dtype]
    for b in range(k // 32):
        blk = x[32 * b:32 * b + 32]
        d = f16_val(data[b * bb:b * bb + 2])
        # each value rounds to the nearest step d; storing d (and m) as f16 (relative error
        # <= 2^-11) moves a value by at most |q| * |d| * 2^-11 (+ |m| * 2^-11)
        slack = (128 if dtype == "Q8_0" else 16) * abs(d) * 2 ** -11 + 2 ** -11 * max(abs(v) for v in blk) + 1e-7
        for j, v in enumerate(blk):
            bound = abs(d) / 2
            if dtype == "Q4_0" and d and v / d + 8 > 15.5:
                bound = abs(d)  # the max maps to q = 0; its mirror image clamps at q = 15 (ggml does too)
            assert abs(want[32 * b + j] - v) <= bound + slack, (b, j, v, want[32 * b + j], d)


def test_f16_and_bf16_casts_round_to_nearest_even():
    vals = [0.0, -0.0, 1.0, -1.5, 65504.0, 65520.0, 1e6, -1e6, 6e-8, 3e-8, 2.9e-8, 1e-10, 5.96e-8,
            6.1e-5, 6.0e-5, 1.0009765625, 1.00048828125, 1.00146484375, float("inf"), float("-inf")]
    vals = [f32(v) for v in vals] + rand_list(61, 3, -70000, 70000) + rand_list(37, 4, -1e-4, 1e-4)
    src = Tensor.from_list(vals, (len(vals),))
    for simd in (False, True):
        B.set_simd(simd)
        h = convert("F16", src)
        for i, v in enumerate(vals):
            try:
                want = f16_bytes(v)
            except OverflowError:  # struct refuses to round to inf; IEEE rounds to +-inf
                want = f16_bytes(math.copysign(float("inf"), v))
            assert h[2 * i:2 * i + 2] == want, (v, h[2 * i:2 * i + 2], want)
        bf = convert("BF16", src)
        assert list(struct.unpack(f"<{len(vals)}H", bf)) == [bf16_ref(v) for v in vals]
    nan = convert("F16", Tensor.from_list([float("nan")], (1,)))
    assert math.isnan(f16_val(nan))
    # and back: F16 / BF16 -> F32 is exact for every bit pattern
    all_h = list(range(0, 65536, 7)) + [0x7C00, 0xFC00, 0x0001, 0x8001, 0x03FF, 0x7BFF]
    hbuf = ffi.new("uint16_t[]", all_h)
    out = ffi.new("float[]", len(all_h))
    for simd in (False, True):
        B.set_simd(simd)
        check(lib.ce_convert(lib.CE_F32, out, lib.CE_F16, hbuf, len(all_h)))
        for i, h in enumerate(all_h):
            want = f16_val(struct.pack("<H", h))
            assert (math.isnan(out[i]) and math.isnan(want)) or out[i] == want, hex(h)
        check(lib.ce_convert(lib.CE_F32, out, lib.CE_BF16, hbuf, len(all_h)))
        for i, h in enumerate(all_h):
            want = bf16_val(h)
            assert (math.isnan(out[i]) and math.isnan(want)) or out[i] == want, hex(h)


def test_i32_conversions():
    ints = [0, 1, -1, 123456, -(2 ** 24), 2 ** 24, 2 ** 31 - 1, -(2 ** 31)]
    t = Tensor.from_list(ints, (len(ints),), "I32")
    f = struct.unpack(f"<{len(ints)}f", convert("F32", t))
    assert list(f) == [f32(float(i)) for i in ints]
    vals = [0.0, 1.9, -1.9, 2.5, -2.5, 1e10, -1e10, float("nan"), 16777216.0]
    src = Tensor.from_list(vals, (len(vals),))
    got = struct.unpack(f"<{len(vals)}i", convert("I32", src))
    assert list(got) == [0, 1, -1, 2, -2, 2 ** 31 - 1, -(2 ** 31), 0, 16777216]


def test_every_pair_of_dtypes_goes_through_f32():
    n = 96
    x = rand_list(n, 5, -3, 3)
    for sd in DTYPES:
        src = Tensor.from_list([int(v * 10) for v in x] if sd == "I32" else x, (n,), sd)
        as_f32 = Tensor((n,), "F32")
        check(lib.ce_convert(lib.CE_F32, as_f32.ptr.data, src.ptr.dtype, src.ptr.data, n))
        for dd in DTYPES:
            got = convert(dd, src)
            want = convert(dd, as_f32)
            assert got == want, (sd, dd)
        assert convert(sd, src) == raw(src)  # same dtype: a copy


def test_large_conversion_crosses_internal_chunks():
    n = 32 * 200  # > the 1024-element chunk used between two non-F32 dtypes
    x = rand_list(n, 9)
    t = Tensor.from_list(x, (n,), "F16")
    q = Tensor((n,), "Q4_1")
    check(lib.ce_convert(lib.CE_Q4_1, q.ptr.data, lib.CE_F16, t.ptr.data, n))
    assert raw(q) == ref_q4_1([f16_val(f16_bytes(v)) for v in x])


def test_convert_rejects_bad_arguments():
    buf = ffi.new("float[]", 64)
    out = ffi.new("char[]", 4096)
    assert lib.ce_convert(99, out, lib.CE_F32, buf, 32) == lib.CE_ERR_DTYPE
    assert lib.ce_convert(lib.CE_F32, out, -1, buf, 32) == lib.CE_ERR_DTYPE
    assert lib.ce_convert(lib.CE_Q8_0, ffi.NULL, lib.CE_F32, buf, 32) == lib.CE_ERR_ARG
    assert lib.ce_convert(lib.CE_Q8_0, out, lib.CE_F32, ffi.NULL, 32) == lib.CE_ERR_ARG
    assert lib.ce_convert(lib.CE_F16, out, lib.CE_F32, buf, -1) == lib.CE_ERR_ARG
    for dt in ("Q8_0", "Q4_0", "Q4_1"):
        code = getattr(lib, "CE_" + dt)
        assert lib.ce_convert(code, out, lib.CE_F32, buf, 33) == lib.CE_ERR_LAYOUT
        assert b"multiple of 32" in ffi.string(lib.ce_last_error())
        assert lib.ce_convert(lib.CE_F32, out, code, buf, 48) == lib.CE_ERR_LAYOUT
    assert lib.ce_convert(lib.CE_F16, out, lib.CE_F32, buf, 0) == lib.CE_OK
    with pytest.raises(errors.ShapeError):
        Tensor((33,), "Q4_0")
