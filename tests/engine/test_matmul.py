"""ce_matmul (cengine/src/matmul.c: checks and dispatch; gemv.c, gemm.c, matmul_scalar.c: kernels) against a pure-Python reference on dequantized weights.

out[m, n] = sum_k x[m, k] * w[n, k] (+ bias[n]) is computed in float64 from the weights as the
engine stores them (decoded here with struct, independently of the engine), and the engine must
agree to ~1e-6 of sum_k |x w| for every weight dtype: activations are never quantized. Also: SIMD
against the scalar twin, 1 vs 2 threads bit for bit (GEMV and GEMM paths), strided rows, bias, and
bad arguments that must raise typed errors rather than crash. Big shapes check sampled outputs
only, so the file stays fast.
"""
import math
import random
import struct

import pytest

from toolkit import errors
from toolkit.core.engine import backend as B
from toolkit.core.engine import functional as F
from toolkit.core.engine._lib import ffi, lib
from toolkit.core.engine.backend import Tensor
from floats import f32

WDTYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1"]
BLOCK = {"Q8_0": 34, "Q4_0": 18, "Q4_1": 20}


def rand_list(n, seed, lo=-1.0, hi=1.0):
    """n float32 values; long lists repeat a random run of a prime length (cheap to build)."""
    r = random.Random(seed)
    base = [f32(r.uniform(lo, hi)) for _ in range(min(n, 4099))]
    return (base * (n // len(base) + 1))[:n] if base else []


def decode_weights(w):
    """w's rows as float lists, decoded from its raw bytes with the format definitions."""
    n, k = w.shape
    data = ffi.buffer(w.ptr.data, w.nbytes)[:]
    if w.dtype == "F32":
        flat = list(struct.unpack(f"<{n * k}f", data))
    elif w.dtype == "F16":
        flat = list(struct.unpack(f"<{n * k}e", data))
    elif w.dtype == "BF16":
        flat = [struct.unpack("<f", struct.pack("<I", h << 16))[0] for h in struct.unpack(f"<{n * k}H", data)]
    else:
        flat, bb = [], BLOCK[w.dtype]
        for o in range(0, len(data), bb):
            blk = data[o:o + bb]
            d = struct.unpack("<e", blk[:2])[0]
            if w.dtype == "Q8_0":
                flat += [d * q for q in struct.unpack("<32b", blk[2:])]
            elif w.dtype == "Q4_0":
                flat += [d * ((b & 15) - 8) for b in blk[2:]] + [d * ((b >> 4) - 8) for b in blk[2:]]
            else:
                m = struct.unpack("<e", blk[2:4])[0]
                flat += [d * (b & 15) + m for b in blk[4:]] + [d * (b >> 4) + m for b in blk[4:]]
    return [flat[i * k:(i + 1) * k] for i in range(n)]


def q4_mins(w):
    """The m term of every block of a Q4_1 tensor (its stored minimum) or a Q4_0 one (-8 d: w = d q
    - 8 d with q in 0..15), per row: the GEMV sums m * (sum of x over the block) apart."""
    n, k = w.shape
    data = ffi.buffer(w.ptr.data, w.nbytes)[:]
    if w.dtype == "Q4_0":
        mins = [-8.0 * struct.unpack("<e", data[o:o + 2])[0] for o in range(0, len(data), 18)]
    else:
        mins = [struct.unpack("<e", data[o + 2:o + 4])[0] for o in range(0, len(data), 20)]
    return [mins[r * (k // 32):(r + 1) * (k // 32)] for r in range(n)]


def check_q4_against_reference(out, x_rows, w, w_rows, pairs=None, rel=2e-6):
    """check_against_reference for Q4_0/Q4_1 weights w (decoded: w_rows), whose m term is summed
    apart: the error scale of an output is sum |x| (|w - m| + |m|), not sum |x w|."""
    ms = q4_mins(w)
    n_count = len(w_rows)
    if pairs is None:
        pairs = [(m, n) for m in range(len(x_rows)) for n in range(n_count)]
    for m, n in pairs:
        xr = x_rows[m]
        want = math.fsum(a * b for a, b in zip(xr, w_rows[n]))
        scale = math.fsum(abs(a) * (abs(b - ms[n][i // 32]) + abs(ms[n][i // 32]))
                          for i, (a, b) in enumerate(zip(xr, w_rows[n])))
        got = out[m * n_count + n]
        assert abs(got - want) <= rel * scale + 1e-30, (m, n, got, want, scale)


def check_against_reference(out, x_rows, w_rows, bias=None, pairs=None, rel=2e-6):
    """out (M x N list) against float64 dot products, relative to sum |x w| of each output."""
    m_count, n_count = len(x_rows), len(w_rows)
    if pairs is None:
        pairs = [(m, n) for m in range(m_count) for n in range(n_count)]
    for m, n in pairs:
        terms = [a * b for a, b in zip(x_rows[m], w_rows[n])]
        want = math.fsum(terms) + (bias[n] if bias else 0.0)
        scale = math.fsum(abs(t) for t in terms) + (abs(bias[n]) if bias else 0.0)
        got = out[m * n_count + n]
        assert abs(got - want) <= rel * scale + 1e-30, (m, n, got, want, scale)


def sample_pairs(m_count, n_count, seed, count=48):
    r = random.Random(seed)
    pairs = {(0, 0), (m_count - 1, n_count - 1), (m_count - 1, 0), (0, n_count - 1)}
    while len(pairs) < min(count, m_count * n_count):
        pairs.add((r.randrange(m_count), r.randrange(n_count)))
    return sorted(pairs)


def make(m, n, k, dtype, seed):
    x = rand_list(m * k, seed)
    wt = Tensor.from_list(rand_list(n * k, seed + 1), (n, k), dtype)
    return x, Tensor.from_list(x, (m, k)), wt


# shapes: (M, N, K). Block dtypes need K % 32 == 0. (7, 9, 1536): a Q4 GEMV whose permuted x is
# too big for the per-thread copy, so the caller builds one shared copy (gemv.c, XQ_LOCAL).
BLOCK_SHAPES = [(1, 17, 32), (2, 3, 64), (3, 33, 96), (5, 16, 576), (17, 40, 1536), (64, 33, 96),
                (1, 1536, 576), (4, 576, 1536), (7, 9, 1536)]
FLOAT_SHAPES = [(1, 1, 1), (1, 3, 17), (2, 17, 3), (3, 33, 33), (5, 1, 576), (17, 3, 1536), (64, 17, 33),
                (1, 576, 3), (2, 1536, 17), (64, 33, 576)]


def shapes_for(dtype):
    return BLOCK_SHAPES if dtype in BLOCK else FLOAT_SHAPES


@pytest.mark.parametrize("dtype", WDTYPES)
def test_matmul_matches_reference(dtype):
    for i, (m, n, k) in enumerate(shapes_for(dtype)):
        x, xt, wt = make(m, n, k, dtype, 100 * i)
        x_rows = [x[r * k:(r + 1) * k] for r in range(m)]
        w_rows = decode_weights(wt)
        pairs = None if m * n * k <= 40000 else sample_pairs(m, n, i)
        for simd in (False, True):
            B.set_simd(simd)
            check_against_reference(F.matmul(xt, wt).to_list(), x_rows, w_rows, pairs=pairs)


@pytest.mark.parametrize("dtype", ["F32", "BF16", "Q4_1"])
def test_bias_and_strided_rows(dtype):
    m, n, k = 6, 35, 64
    x, xt, wt = make(m, n, k, dtype, 7)
    bias = rand_list(n, 8, -5, 5)
    bt = Tensor.from_list(bias, (n,))
    # x as every other row of a taller tensor (outer stride of two rows), in two outer dims
    tall = Tensor.from_list([v for r in range(m) for v in x[r * k:(r + 1) * k] + [9.0] * k], (2 * m, k))
    xs = tall._view((2, m // 2, k), (tall.strides[0] * m, tall.strides[0] * 2, 4), 0)
    big_out = Tensor((m, n + 5))
    out = big_out._view((2, m // 2, n), ((n + 5) * 4 * (m // 2), (n + 5) * 4, 4), 0)
    x_rows = [x[r * k:(r + 1) * k] for r in range(m)]
    w_rows = decode_weights(wt)
    for simd in (False, True):
        B.set_simd(simd)
        for mm in (1, 2, m):  # GEMV and GEMM paths
            got = F.matmul(xs if mm == m else Tensor.from_list(x[:mm * k], (mm, k)), wt, bt).to_list()
            check_against_reference(got, x_rows[:mm], w_rows, bias)
        F.matmul(xs, wt, bt, out=out)
        flat = big_out.to_list()
        got = [flat[r * (n + 5) + j] for r in range(m) for j in range(n)]
        check_against_reference(got, x_rows, w_rows, bias)
        assert all(flat[r * (n + 5) + j] == 0.0 for r in range(m) for j in range(n, n + 5))


@pytest.mark.parametrize("dtype", WDTYPES)
def test_simd_agrees_with_scalar_and_threads_are_bit_identical(dtype):
    shapes = [(1, 77, 576), (2, 45, 96), (3, 20, 64), (4, 50, 192), (13, 70, 320), (64, 100, 576)]
    if dtype not in BLOCK:
        shapes += [(1, 33, 17), (7, 19, 45)]
    for i, (m, n, k) in enumerate(shapes):
        _, xt, wt = make(m, n, k, dtype, 50 + i)
        res = {}
        for simd in (False, True):
            for threads in (1, 2, 3):
                B.set_simd(simd)
                B.set_threads(threads)
                res[simd, threads] = F.matmul(xt, wt).to_list()
            assert res[simd, 1] == res[simd, 2] == res[simd, 3], (dtype, m, n, k, simd)
        # the scalar twin (matmul_scalar.c) repeats the SIMD GEMV's arithmetic lane by lane
        assert res[False, 1] == res[True, 1], (dtype, m, n, k)


@pytest.mark.parametrize("dtype", ["Q4_0", "Q4_1"])
def test_q4_gemv_holds_at_any_activation_scale(dtype):
    """The Q4 GEMV reads nibbles as subnormal floats and rescales x by a power of two chosen from
    its largest |x| (gemv.c, build_xq): results must not depend on the magnitude of x."""
    m, n, k = 1, 37, 576
    x, xt, wt = make(m, n, k, dtype, 11)
    w_rows = decode_weights(wt)
    B.set_simd(True)
    base = F.matmul(xt, wt).to_list()
    check_q4_against_reference(base, [x], wt, w_rows)
    for e in (-90, -40, 20, 60, 100):
        scaled = [math.ldexp(v, e) for v in x]
        got = F.matmul(Tensor.from_list(scaled, (m, k)), wt).to_list()
        assert got == [math.ldexp(v, e) for v in base], e  # powers of two scale exactly
    # one huge activation among small ones (LLMs have such outliers), and a row of zeros
    mixed = [f32(v * 1e-3) for v in x]
    mixed[100] = 3.0e4
    got = F.matmul(Tensor.from_list(mixed, (m, k)), wt).to_list()
    check_q4_against_reference(got, [mixed], wt, w_rows)
    assert F.matmul(Tensor.from_list([0.0] * k, (m, k)), wt).to_list() == [0.0] * n
    bad = list(x)
    bad[5] = float("inf")
    assert not any(math.isfinite(v) for v in F.matmul(Tensor.from_list(bad, (m, k)), wt).to_list())


@pytest.fixture(scope="module")
def mxcsr(tmp_path_factory):
    """get/set of this thread's SSE control register, from a tiny cffi module built here (a library
    compiled with -ffast-math sets denormals-are-zero in the whole process when it loads)."""
    import importlib.util
    import platform

    import cffi
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("MXCSR is an x86 register")
    builder = cffi.FFI()
    builder.cdef("unsigned get_csr(void); void set_csr(unsigned);")
    builder.set_source("_mxcsr_for_tests", "#include <xmmintrin.h>\n"
                       "unsigned get_csr(void) { return _mm_getcsr(); }\n"
                       "void set_csr(unsigned v) { _mm_setcsr(v); }\n")
    path = builder.compile(tmpdir=str(tmp_path_factory.mktemp("mxcsr")))
    spec = importlib.util.spec_from_file_location("_mxcsr_for_tests", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.lib


@pytest.mark.parametrize("path", ["subnormal", "normal"])
@pytest.mark.parametrize("dtype", ["Q4_0", "Q4_1"])
def test_q4_gemv_ignores_denormals_are_zero_mode(mxcsr, dtype, path):
    """q4_bits feeds the nibbles to the FMAs as subnormal floats; with the caller's DAZ/FTZ bits set
    they would read as zero. The GEMV clears them for its own duration, on every pool thread (the
    normal-float path, q4_ints, must be unaffected as well)."""
    B.set_q4_path(path)
    m, n, k = 1, 1536, 576  # large enough to use both threads
    x, xt, wt = make(m, n, k, dtype, 23)
    B.set_threads(2)
    want = F.matmul(xt, wt).to_list()
    check_against_reference(want, [x], decode_weights(wt), pairs=sample_pairs(m, n, 5))
    saved = mxcsr.get_csr()
    try:
        mxcsr.set_csr(saved | 0x8040)  # DAZ (bit 6) and FTZ (bit 15)
        tiny = float("5e-324")
        assert tiny * 1.0 == 0.0  # the mode is really on (Python floats are SSE doubles)
        B.set_threads(1)
        B.set_threads(2)  # new workers inherit the caller's MXCSR
        assert F.matmul(xt, wt).to_list() == want
        assert mxcsr.get_csr() & ~0x3F == (saved | 0x8040) & ~0x3F  # the caller's modes stay (not its flags)
    finally:
        mxcsr.set_csr(saved)
        B.set_threads(1)  # workers made under DAZ must not outlive this test
        B.set_threads(2)


def test_threads_bit_identical_on_model_shapes():
    """Decode (M=1) and prefill shapes of the default model, large enough to use both threads."""
    for dtype in ("Q4_1", "BF16"):
        for m, n, k in [(1, 1536, 576), (1, 576, 1536), (7, 576, 1536), (37, 576, 576), (9, 1536, 576)]:
            _, xt, wt = make(m, n, k, dtype, m + n)
            B.set_threads(1)
            one = F.matmul(xt, wt).to_list()
            B.set_threads(2)
            assert F.matmul(xt, wt).to_list() == one


@pytest.mark.parametrize("dtype", ["Q8_0", "Q4_1", "F16"])
def test_gemv_work_stealing_covers_every_row_once(dtype):
    """GEMV threads take their rows piece by piece and steal from each other (gemv.c and steal.c,
    rng_take): with more threads than cores (so they fall behind one another at random) every
    output row must still be written once, with the same bits as one thread gives."""
    m, n, k = 1, 2000, 576  # not a multiple of the 16-row alignment
    _, xt, wt = make(m, n, k, dtype, 77)
    B.set_threads(1)
    one = F.matmul(xt, wt).to_list()
    for threads in (3, 4, 7):
        B.set_threads(threads)
        for _ in range(5):
            out = Tensor.from_list([float("nan")] * n, (m, n))
            F.matmul(xt, wt, out=out)
            assert out.to_list() == one, threads


def test_empty_and_degenerate_shapes():
    w = Tensor.from_list(rand_list(3 * 32, 1), (3, 32), "Q8_0")
    out = F.matmul(Tensor((0, 32)), w)
    assert out.shape == (0, 3)
    bias = Tensor.from_list([1.0, 2.0, 3.0], (3,))
    got = F.matmul(Tensor((2, 0)), Tensor((3, 0)), bias).to_list()
    assert got == [1.0, 2.0, 3.0, 1.0, 2.0, 3.0]
    assert F.matmul(Tensor.from_list([2.0], (1, 1)), Tensor.from_list([3.0], (1, 1))).to_list() == [6.0]


def test_bad_arguments_raise_and_never_crash():
    x = Tensor.from_list(rand_list(2 * 64, 1), (2, 64))
    w = Tensor.from_list(rand_list(5 * 64, 2), (5, 64), "Q4_0")
    with pytest.raises(errors.ShapeError, match="K"):
        F.matmul(Tensor((2, 32)), w)                              # K mismatch
    with pytest.raises(errors.ShapeError):
        F.matmul(x, w, out=Tensor((2, 4)))                        # N mismatch
    with pytest.raises(errors.ShapeError):
        F.matmul(x, w, out=Tensor((3, 5)))                        # rows mismatch
    with pytest.raises(errors.ShapeError):
        F.matmul(x, w, bias=Tensor((4,)))                         # bias shape
    with pytest.raises(errors.DTypeError):
        F.matmul(x, w, bias=Tensor((5,), "F16"))                  # bias dtype
    with pytest.raises(errors.DTypeError):
        F.matmul(Tensor((2, 64), "F16"), w)                       # x must be F32
    with pytest.raises(errors.DTypeError):
        F.matmul(x, w, out=Tensor((2, 5), "I32"))                 # out must be F32
    with pytest.raises(errors.DTypeError):
        F.matmul(x, Tensor((5, 64), "I32"))                       # no integer weights
    with pytest.raises(errors.ShapeError):
        F.matmul(x, Tensor((1, 5, 64)), out=Tensor((2, 5)))       # w must be 2-D
    with pytest.raises(errors.ToolkitError):
        F.matmul(x, Tensor.from_list(rand_list(64 * 64, 3), (64, 64)), out=x)  # out overlaps x
    # raw engine calls: NULL tensors, and a block tensor whose K is not a multiple of 32
    o = Tensor((2, 5))
    assert lib.ce_matmul(ffi.NULL, x.ptr, w.ptr, ffi.NULL) == lib.CE_ERR_ARG
    assert lib.ce_matmul(o.ptr, ffi.NULL, w.ptr, ffi.NULL) == lib.CE_ERR_ARG
    assert lib.ce_matmul(o.ptr, x.ptr, ffi.NULL, ffi.NULL) == lib.CE_ERR_ARG
    fake = ffi.new("ce_tensor *")
    fake.data, fake.dtype, fake.ndim = w.ptr.data, lib.CE_Q4_0, 2
    fake.shape[0], fake.shape[1], fake.shape[2], fake.shape[3] = 5, 48, 1, 1
    fake.stride[0] = 18 * 2
    x48 = Tensor((2, 48))
    assert lib.ce_matmul(o.ptr, x48.ptr, fake, ffi.NULL) == lib.CE_ERR_LAYOUT
    assert b"multiple of 32" in ffi.string(lib.ce_last_error())
    fake.dtype = 42
    assert lib.ce_matmul(o.ptr, x48.ptr, fake, ffi.NULL) == lib.CE_ERR_DTYPE
    # the engine still works after all that
    check_against_reference(F.matmul(x, w).to_list(), [x.to_list()[:64], x.to_list()[64:]], decode_weights(w))


# ---- matmul_n: one x against several weights in one engine call ----

def _mixed_weights(k, seed, sizes=((576, "Q4_1"), (192, "Q4_0"), (0, "Q4_1"), (33, "Q8_0"), (17, "BF16"),
                                   (40, "Q4_1"), (3, "F32"))):
    return [Tensor.from_list(rand_list(n * k, seed + i), (n, k), dt) if n else Tensor((0, k), dt)
            for i, (n, dt) in enumerate(sizes)]


@pytest.mark.parametrize("m", [1, 2, 3, 7, 9])
def test_matmul_n_matches_separate_calls_bit_for_bit(m):
    """The fused call runs every weight's rows as one GEMV job (rows of different weights share a
    thread's piece, xq is built once per Q4 dtype, a weight may have no rows); whatever the thread
    count, each output must carry the bits of its own matmul call. m = 9 takes the GEMM path."""
    k = 576
    ws = _mixed_weights(k, 10 * m)
    xt = Tensor.from_list(rand_list(m * k, m), (m, k))
    biases = [Tensor.from_list(rand_list(w.shape[0], 5 + i), (w.shape[0],)) if i % 2 else None
              for i, w in enumerate(ws)]
    B.set_threads(1)
    want = [F.matmul(xt, w, b).to_list() for w, b in zip(ws, biases)]
    for threads in (1, 2, 3):
        B.set_threads(threads)
        outs = [Tensor.from_list([float("nan")] * (m * w.shape[0]), (m, w.shape[0])) for w in ws]
        got = F.matmul_n(xt, ws, biases, outs=outs)
        assert [o.to_list() for o in got] == want, threads
        assert all(a is b for a, b in zip(got, outs))
        assert [o.to_list() for o in F.matmul_n(xt, ws[:1])] == want[:1]


def test_matmul_n_with_a_shared_xq_and_against_the_reference():
    """K = 4096 with Q4_0 and Q4_1 weights and 3 rows of x: their permuted copies of x are too big
    for the per-thread stack copy, so the caller builds one of each (gemv.c, mm_gemv_run)."""
    m, k = 3, 4096
    ws = [Tensor.from_list(rand_list(n * k, 40 + n), (n, k), dt) for n, dt in [(9, "Q4_0"), (7, "Q4_1"), (5, "Q4_0")]]
    x = rand_list(m * k, 41)
    xt = Tensor.from_list(x, (m, k))
    outs = F.matmul_n(xt, ws)
    for w, o in zip(ws, outs):
        assert o.to_list() == F.matmul(xt, w).to_list()
        check_against_reference(o.to_list(), [x[r * k:(r + 1) * k] for r in range(m)], decode_weights(w))


def test_matmul_n_scalar_reference_agrees():
    k = 96
    ws = _mixed_weights(k, 3, sizes=((17, "Q4_1"), (5, "F16"), (33, "Q8_0")))
    xt = Tensor.from_list(rand_list(2 * k, 4), (2, k))
    simd = [o.to_list() for o in F.matmul_n(xt, ws)]
    B.set_simd(False)
    try:
        scalar = [o.to_list() for o in F.matmul_n(xt, ws)]
    finally:
        B.set_simd(True)
    for a, b in zip(simd, scalar):
        assert all(abs(p - q) <= 1e-5 * (1 + abs(q)) for p, q in zip(a, b))


def test_matmul_n_bad_arguments_raise_and_never_crash():
    k = 64
    x = Tensor.from_list(rand_list(2 * k, 1), (2, k))
    w = Tensor.from_list(rand_list(5 * k, 2), (5, k), "Q4_1")
    w2 = Tensor.from_list(rand_list(3 * k, 3), (3, k), "Q8_0")
    with pytest.raises(errors.ArgumentTypeError):
        F.matmul_n(x, w)                                          # not a list
    with pytest.raises(errors.ArgumentTypeError):
        F.matmul_n(x, [])
    with pytest.raises(errors.ArgumentTypeError, match=r"ws\[1\]"):
        F.matmul_n(x, [w, "w2"])
    with pytest.raises(errors.ArgumentTypeError, match=r"ws\[1\]"):  # with outputs given too
        F.matmul_n(x, [w, "w2"], outs=[Tensor((2, 5)), Tensor((2, 3))])
    with pytest.raises(errors.ArgumentTypeError, match=r"outs\[1\]"):
        F.matmul_n(x, [w, w2], outs=[Tensor((2, 5)), None])
    with pytest.raises(errors.ArgumentTypeError, match="x"):
        F.matmul_n([1.0], [w])
    with pytest.raises(errors.InvalidArgumentError, match="at most"):
        F.matmul_n(x, [w] * (F.MATMUL_MAX + 1))
    with pytest.raises(errors.ArgumentTypeError, match="outs"):
        F.matmul_n(x, [w, w2], outs=[Tensor((2, 5))])             # one out for two weights
    with pytest.raises(errors.ShapeError, match="weight 1"):
        F.matmul_n(x, [w, Tensor((3, 32))])                       # K mismatch in the second weight
    with pytest.raises(errors.ShapeError, match="weight 1"):
        F.matmul_n(x, [w, w2], outs=[Tensor((2, 5)), Tensor((2, 4))])
    with pytest.raises(errors.DTypeError):
        F.matmul_n(x, [w, w2], biases=[None, Tensor((3,), "F16")])
    o = Tensor((2, 5))
    with pytest.raises(errors.ToolkitError, match="overlaps out 0"):
        F.matmul_n(x, [w, w], outs=[o, o])                        # two outputs in one buffer
    wf = Tensor.from_list(rand_list(10 * k, 4), (10, k))
    inside_wf = wf.reshape(10 * k)[0:10].reshape(2, 5)
    with pytest.raises(errors.ToolkitError, match="overlaps the weight or bias of 1"):
        F.matmul_n(x, [w, wf], outs=[inside_wf, Tensor((2, 10))])  # an output inside another weight
    assert wf.to_list() == rand_list(10 * k, 4)                      # and nothing was written
    # raw engine calls: counts out of range and NULL arrays
    o2 = Tensor((2, 3))  # held: the array below keeps only its pointer
    outs = ffi.new("ce_tensor *[2]", [o.ptr, o2.ptr])
    wsp = ffi.new("ce_tensor *[2]", [w.ptr, w2.ptr])
    assert lib.ce_matmul_n(0, outs, x.ptr, wsp, ffi.NULL) == lib.CE_ERR_ARG
    assert lib.ce_matmul_n(lib.CE_MATMUL_MAX + 1, outs, x.ptr, wsp, ffi.NULL) == lib.CE_ERR_ARG
    assert lib.ce_matmul_n(2, ffi.NULL, x.ptr, wsp, ffi.NULL) == lib.CE_ERR_ARG
    assert lib.ce_matmul_n(2, outs, x.ptr, ffi.NULL, ffi.NULL) == lib.CE_ERR_ARG
    assert lib.ce_matmul_n(2, outs, ffi.NULL, wsp, ffi.NULL) == lib.CE_ERR_ARG
    assert lib.ce_matmul_n(2, outs, x.ptr, wsp, ffi.NULL) == lib.CE_OK
    assert F.matmul_n(x, [w, w2])[1].to_list() == F.matmul(x, w2).to_list()


def test_matmul_n_empty_shapes():
    w = Tensor.from_list(rand_list(3 * 32, 1), (3, 32), "Q4_1")
    outs = F.matmul_n(Tensor((0, 32)), [w, w])
    assert [o.shape for o in outs] == [(0, 3), (0, 3)]
    bias = Tensor.from_list([1.0, 2.0, 3.0], (3,))
    got = F.matmul_n(Tensor((1, 0)), [Tensor((3, 0)), Tensor((2, 0))], biases=[bias, None])
    assert [o.to_list() for o in got] == [[1.0, 2.0, 3.0], [0.0, 0.0]]
