"""Engine ops against pure-Python references (math module, float64) on awkward shapes.

Also: SIMD kernels against their scalar twins, 1 vs 2 threads bit for bit, and every op driven with
bad arguments (wrong shapes, dtypes, None, empty tensors), which must raise a typed ToolkitError.
Attention has its own file (test_attention.py).
"""
import math

import pytest

from toolkit import errors
from toolkit.core.engine import backend as B
from toolkit.core.engine import functional as F
from toolkit.core.engine._lib import check, ffi, lib
from toolkit.core.engine.backend import Tensor
from floats import f32, rand_list

NAN, INF = float("nan"), float("inf")


def rows_of(flat, cols):
    return [flat[i:i + cols] for i in range(0, len(flat), cols)]


def assert_close(got, want, rel=1e-6, abs_=1e-7, what=""):
    assert len(got) == len(want), what
    for i, (g, w) in enumerate(zip(got, want)):
        if math.isnan(w):
            assert math.isnan(g), f"{what}[{i}]: got {g}, want nan"
        elif math.isinf(w):
            assert g == w, f"{what}[{i}]: got {g}, want {w}"
        else:
            assert abs(g - w) <= abs_ + rel * abs(w), f"{what}[{i}]: got {g!r}, want {w!r}"


def both_paths(fn):
    """fn() under the scalar kernels and under SIMD (where the CPU has it): (scalar, simd)."""
    B.set_simd(False)
    scalar = fn()
    B.set_simd(True)
    return scalar, fn()


def strided_view(t, cols):
    """A view of the first `cols` columns of a 2-D tensor: outer stride > row length."""
    return t._view((t.shape[0], cols), (t.strides[0], t.strides[1]), 0)


SHAPES = [(1,), (3,), (17,), (2, 33), (3, 576), (1, 1536), (2, 3, 5)]


def numel(shape):
    return math.prod(shape)


# ---------------------------------------------------------------------------------------------
# elementwise
def silu_ref(x):
    return x / (1.0 + math.exp(-x)) if x > -700 else 0.0


def gelu_ref(x):
    return 0.5 * x * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


@pytest.mark.parametrize("shape", SHAPES)
def test_unary_and_binary_ops_match_reference(shape):
    n = numel(shape)
    a, b = rand_list_ops(n, 1, -9, 9), rand_list_ops(n, 2)
    ta, tb = Tensor.from_list(a, shape), Tensor.from_list(b, shape)
    for simd in (False, True):
        B.set_simd(simd)
        assert_close(F.silu(ta).to_list(), [silu_ref(x) for x in a], 2e-6, 1e-7, "silu")
        assert_close(F.gelu(ta).to_list(), [gelu_ref(x) for x in a], 1e-5, 1e-6, "gelu")
        assert_close(F.silu_mul(ta, tb).to_list(), [silu_ref(x) * y for x, y in zip(a, b)], 3e-6, 1e-7, "silu_mul")
        # add / mul / scale are one float32 rounding of the exact result: compare bit for bit
        assert F.add(ta, tb).to_list() == [f32(x + y) for x, y in zip(a, b)]
        assert F.mul(ta, tb).to_list() == [f32(x * y) for x, y in zip(a, b)]
        assert F.scale(ta, 0.3).to_list() == [f32(x * f32(0.3)) for x in a]


@pytest.mark.parametrize("rows,cols", [(1, 1), (3, 17), (4, 33), (2, 576)])
def test_add_mul_broadcast_one_row(rows, cols):
    a, b = rand_list_ops(rows * cols, 3), rand_list_ops(cols, 4)
    ta = Tensor.from_list(a, (rows, cols))
    for tb in (Tensor.from_list(b, (cols,)), Tensor.from_list(b, (1, cols))):
        want_add = [f32(x + b[i % cols]) for i, x in enumerate(a)]
        want_mul = [f32(x * b[i % cols]) for i, x in enumerate(a)]
        for simd in (False, True):
            B.set_simd(simd)
            assert F.add(ta, tb).to_list() == want_add
            assert F.mul(ta, tb).to_list() == want_mul


def test_elementwise_in_place_and_strided_rows():
    a, b = rand_list_ops(3 * 40, 5), rand_list_ops(3 * 40, 6)
    ta, tb = Tensor.from_list(a, (3, 40)), Tensor.from_list(b, (3, 40))
    F.add(ta, tb, out=ta)  # out aliases a
    assert ta.to_list() == [f32(x + y) for x, y in zip(a, b)]
    tg = Tensor.from_list(a, (3, 40))
    F.silu_mul(tg, tb, out=tg)
    assert_close(tg.to_list(), [silu_ref(x) * y for x, y in zip(a, b)], 3e-6, 1e-7)
    # strided rows: the first 33 of 40 columns of each row, written in place; the rest untouched
    tc = Tensor.from_list(a, (3, 40))
    v = strided_view(tc, 33)
    assert not v.is_contiguous()
    F.scale(v, 2.0, out=v)
    got = tc.to_list()
    for i, x in enumerate(a):
        assert got[i] == (f32(2 * x) if i % 40 < 33 else x)
    out = F.silu(v)
    assert_close(out.to_list(), [silu_ref(2 * x) for i, x in enumerate(a) if i % 40 < 33], 2e-6, 1e-7)


def test_silu_special_values_agree_between_kernels():
    vals = [0.0, -0.0, 1e-30, -1e-30, 20.0, -20.0, 87.0, -87.0, 88.5, -88.5, 89.0, -89.0, 100.0, -100.0,
            1e30, -1e30, INF, NAN]
    t = Tensor.from_list(vals)
    s, v = both_paths(lambda: F.silu(t).to_list())
    for x, a, b in zip(vals, s, v):
        if math.isnan(x):
            assert math.isnan(a) and math.isnan(b)
        elif math.isinf(a):
            assert a == b
        else:
            assert abs(a - b) <= 1e-35 + 2e-6 * abs(a), (x, a, b)
    assert s[16] == INF and v[16] == INF
    assert abs(s[12] - 100.0) < 1e-5 and s[13] == 0.0 and v[13] == 0.0


def test_exp_polynomial_accuracy_through_softmax_pairs():
    # softmax([0, x]) = [1/(1+e^x), e^x/(1+e^x)]: sweeps the SIMD exp over its range
    xs = [i / 8.0 for i in range(-700, 1)]
    t = Tensor.from_list([[0.0, x] for x in xs])
    B.set_simd(True)
    got = F.softmax(t).to_list()
    for x, p1 in zip(xs, got[1::2]):
        want = math.exp(x) / (1 + math.exp(x))
        assert abs(p1 - want) <= 1e-37 + 1e-6 * want, (x, p1, want)


def test_elementwise_threads_bit_identical_and_simd_close():
    n = 5 * 40000
    a, b = rand_list_ops(n, 7, -12, 12), rand_list_ops(n, 8)
    ta, tb, row = Tensor.from_list(a, (5, 40000)), Tensor.from_list(b, (5, 40000)), Tensor.from_list(b[:40000])
    ops = [lambda: F.silu(ta), lambda: F.gelu(ta), lambda: F.silu_mul(ta, tb), lambda: F.add(ta, tb),
           lambda: F.mul(ta, row), lambda: F.scale(ta, -1.5)]
    for simd in (False, True):
        B.set_simd(simd)
        for op in ops:
            B.set_threads(1)
            one = op().to_list()
            B.set_threads(2)
            assert op().to_list() == one
    for op in ops:
        s, v = both_paths(lambda: op().to_list())
        assert_close(v, s, 2e-6, 1e-30)


def test_elementwise_empty_is_a_no_op():
    t = Tensor((0, 5))
    for out in (F.silu(t), F.gelu(t), F.add(t, t), F.mul(t, Tensor((5,))), F.scale(t, 2.0), F.silu_mul(t, t)):
        assert out.shape == (0, 5) and out.to_list() == []


# ---------------------------------------------------------------------------------------------
# rmsnorm
def rmsnorm_ref(x, w, eps):
    out = []
    for r in x:
        inv = 1.0 / math.sqrt(sum(v * v for v in r) / len(r) + eps)
        out += [v * inv * (w[i] if w else 1.0) for i, v in enumerate(r)]
    return out


@pytest.mark.parametrize("rows,cols", [(1, 1), (1, 3), (3, 17), (2, 33), (2, 576), (1, 1536)])
def test_rmsnorm_matches_float64(rows, cols):
    x = rand_list_ops(rows * cols, 10, -5000, 5000)
    x[::7] = [f32(v * 1e-3) for v in x[::7]]  # mix large residual values with small ones
    w = rand_list_ops(cols, 11, 0.1, 3)
    tx, tw = Tensor.from_list(x, (rows, cols)), Tensor.from_list(w)
    for weight in (tw, None):
        want = rmsnorm_ref(rows_of(x, cols), w if weight else None, 1e-5)
        s, v = both_paths(lambda: F.rms_norm(tx, weight, eps=1e-5).to_list())
        assert s == v  # same lanes, same order, exact double squares
        assert_close(s, want, 1e-6, 1e-12)


def test_rmsnorm_eps_strided_threads():
    x = rand_list_ops(64 * 600, 12, -3, 3)
    t = Tensor.from_list(x, (64, 600))
    v = strided_view(t, 576)
    w = Tensor.from_list(rand_list_ops(576, 13))
    want = rmsnorm_ref([r[:576] for r in rows_of(x, 600)], w.to_list(), 1e-6)
    B.set_threads(1)
    one = F.rms_norm(v, w, eps=1e-6).to_list()
    assert_close(one, want, 1e-6, 1e-12)
    B.set_threads(2)
    assert F.rms_norm(v, w, eps=1e-6).to_list() == one
    # eps dominates a zero row
    z = F.rms_norm(Tensor((1, 8)), None, eps=1e-5).to_list()
    assert z == [0.0] * 8


# ---------------------------------------------------------------------------------------------
# softmax
def softmax_ref(row, scale):
    xs = [v * scale for v in row]
    m = max(xs)
    if m == -INF:
        return [0.0] * len(row)
    e = [math.exp(v - m) for v in xs]
    s = sum(e)
    return [v / s for v in e]


@pytest.mark.parametrize("rows,cols", [(1, 1), (1, 3), (3, 17), (4, 33), (2, 576)])
@pytest.mark.parametrize("scale", [1.0, 0.125])
def test_softmax_matches_float64(rows, cols, scale):
    x = rand_list_ops(rows * cols, 20, -30, 30)
    t = Tensor.from_list(x, (rows, cols))
    want = [p for r in rows_of(x, cols) for p in softmax_ref(r, scale)]
    for simd in (False, True):
        B.set_simd(simd)
        got = F.softmax(t, scale=scale).to_list()
        assert_close(got, want, 2e-6, 1e-12)
        for r in rows_of(got, cols):
            assert abs(sum(r) - 1.0) < 1e-5


def test_softmax_masked_rows():
    x = [[0.0, -INF, 1.0, -INF], [-INF] * 4, [5.0, 5.0, -INF, 5.0], [1.0, NAN, 0.0, 0.0]]
    for simd in (False, True):
        B.set_simd(simd)
        got = F.softmax(Tensor.from_list(x)).tolist()
        assert got[0][1] == 0.0 and got[0][3] == 0.0
        assert_close(got[0], softmax_ref(x[0], 1.0), 1e-6, 1e-9)
        assert got[1] == [0.0, 0.0, 0.0, 0.0]  # all masked: zeros, not NaN
        assert_close(got[2], [1 / 3, 1 / 3, 0.0, 1 / 3], 1e-6, 0)
        assert all(math.isnan(v) for v in got[3])  # NaN in, NaN out
    # in place, threads
    big = Tensor.from_list(rand_list_ops(40 * 1000, 21, -10, 10), (40, 1000))
    B.set_threads(1)
    one = F.softmax(big, 0.5).to_list()
    B.set_threads(2)
    assert F.softmax(big, 0.5).to_list() == one
    F.softmax(big, 0.5, out=big)
    assert big.to_list() == one


# ---------------------------------------------------------------------------------------------
# rope
def rope_ref_hf_f32(x, pos, H, D, n_rot, theta, mode):
    """Hugging Face's float32 arithmetic, step by step (inv_freq, angle, cos/sin, rotation)."""
    half = n_rot // 2
    inv = [f32(1.0 / f32(theta ** f32(f32(2 * i) / f32(n_rot)))) for i in range(half)]
    out = list(x)
    for t, p in enumerate(pos):
        angles = [f32(f32(p) * inv[i]) for i in range(half)]
        cs, sn = [f32(math.cos(a)) for a in angles], [f32(math.sin(a)) for a in angles]
        for h in range(H):
            base = (t * H + h) * D
            for i in range(half):
                i0, i1 = (base + 2 * i, base + 2 * i + 1) if mode == "adjacent" else (base + i, base + i + half)
                x0, x1 = x[i0], x[i1]
                out[i0] = f32(f32(x0 * cs[i]) - f32(x1 * sn[i]))
                out[i1] = f32(f32(x0 * sn[i]) + f32(x1 * cs[i]))
    return out


def rope_ref_exact(x, pos, H, D, n_rot, theta, mode):
    """The textbook rotation in float64, to check the convention independently of rounding."""
    half = n_rot // 2
    out = list(x)
    for t, p in enumerate(pos):
        for h in range(H):
            base = (t * H + h) * D
            for i in range(half):
                a = p * theta ** (-2.0 * i / n_rot)
                i0, i1 = (base + 2 * i, base + 2 * i + 1) if mode == "adjacent" else (base + i, base + i + half)
                out[i0] = x[i0] * math.cos(a) - x[i1] * math.sin(a)
                out[i1] = x[i0] * math.sin(a) + x[i1] * math.cos(a)
    return out


@pytest.mark.parametrize("mode", ["adjacent", "half"])
@pytest.mark.parametrize("T,H,D,n_rot,pos", [
    (1, 1, 2, 2, [0]),
    (3, 2, 8, 8, [0, 1, 2]),
    (2, 3, 64, 64, [7, 4095]),
    (4, 2, 64, 32, [5, 3, 1000, 0]),   # partial rotation: dims 32..63 untouched
    (1, 9, 64, 64, [130]),
])
def test_rope_matches_hf_float32_exactly(mode, T, H, D, n_rot, pos):
    x = rand_list_ops(T * H * D, 30)
    for theta in (10000.0, 500000.0):
        want = rope_ref_hf_f32(x, pos, H, D, n_rot, theta, mode)
        for shape in ((T, H, D), (T, H * D)):
            t = Tensor.from_list(x, shape)
            F.rope_(t, pos, head_dim=D, theta=theta, n_rot=n_rot, mode=mode)
            assert t.to_list() == want
        if max(pos) < 2000:  # float32 angles drift by ~pos * 2^-24 rad from the exact ones
            assert_close(want, rope_ref_exact(x, pos, H, D, n_rot, theta, mode), 1e-5, 1e-5 + max(pos) * 2 ** -20)


def test_rope_strided_heads_and_threads():
    T, H, D = 64, 4, 64
    x = rand_list_ops(T * (H + 2) * D, 31)
    pos = list(range(100, 100 + T))
    # q is the first H heads of a fused [T, H + 2, D] buffer: a strided [T, H, D] view
    want_full = rope_ref_hf_f32(x, pos, H + 2, D, D, 10000.0, "half")
    for threads in (1, 2):
        B.set_threads(threads)
        buf = Tensor.from_list(x, (T, H + 2, D))
        q = buf._view((T, H, D), buf.strides, 0)
        F.rope_(q, Tensor.from_list(pos, dtype="I32"), head_dim=D, mode="half")
        got = buf.to_list()
        for i, g in enumerate(got):
            assert g == (want_full[i] if (i // D) % (H + 2) < H else x[i])


def test_rope_bad_arguments():
    t = Tensor((2, 2, 8))
    with pytest.raises(errors.IndexOutOfRangeError, match="-1"):
        F.rope_(t, [3, -1], head_dim=8)
    with pytest.raises(errors.ShapeError):
        F.rope_(t, [0, 1, 2], head_dim=8)        # one position per token
    with pytest.raises(errors.ShapeError):
        F.rope_(t, [0, 1], head_dim=6)           # D != head_dim
    with pytest.raises(errors.ShapeError):
        F.rope_(Tensor((2, 20)), [0, 1], head_dim=8)  # not whole heads
    for n_rot in (0, 3, 10):
        with pytest.raises(errors.InvalidArgumentError):
            F.rope_(t, [0, 1], head_dim=8, n_rot=n_rot)
    for theta in (0.0, -1.0, INF, NAN):
        with pytest.raises(errors.InvalidArgumentError):
            F.rope_(t, [0, 1], head_dim=8, theta=theta)
    with pytest.raises(errors.DTypeError):
        F.rope_(Tensor((2, 2, 8), "F16"), [0, 1], head_dim=8)
    with pytest.raises(errors.DTypeError):
        F.rope_(t, Tensor.from_list([0.0, 1.0]), head_dim=8)
    with pytest.raises(errors.InvalidArgumentError):
        check(lib.ce_rope(t.ptr, Tensor.from_list([0, 1], dtype="I32").ptr, 8, 8, 10000.0, 7))


# ---------------------------------------------------------------------------------------------
# argmax / topk
def order_key(v, i):
    """torch's order: NaN above everything, then by value, ties by lower index."""
    return (0, 0.0, i) if math.isnan(v) else (1, -v, i)


def topk_ref(row, k):
    idx = sorted(range(len(row)), key=lambda i: order_key(row[i], i))[:k]
    return [row[i] for i in idx], idx


def test_argmax_ties_nan_and_shapes():
    rows = [[1.0, 3.0, 3.0, 2.0], [-INF, -INF, -INF, -INF], [0.0, -0.0, 0.0, -1.0], [1.0, NAN, 5.0, NAN],
            [-5.0, -2.0, -2.0, -7.0]]
    assert F.argmax(Tensor.from_list(rows)).to_list() == [1, 0, 0, 1, 1]
    assert F.argmax(Tensor.from_list([7.0])).to_list() == [0]
    for rows_, cols in [(1, 1536), (3, 17), (2, 33)]:
        x = [f32(round(v)) for v in rand_list_ops(rows_ * cols, 40, -20, 20)]  # many ties
        for simd in (False, True):
            B.set_simd(simd)
            got = F.argmax(Tensor.from_list(x, (rows_, cols))).to_list()
            assert got == [topk_ref(r, 1)[1][0] for r in rows_of(x, cols)]
    # long rows take the two-pass SIMD kernel: NaN anywhere, ties, signed zeros, -inf
    long = [-INF] * 1000
    for simd in (False, True):
        B.set_simd(simd)
        r1 = list(long); r1[700], r1[3] = NAN, 5.0              # NaN beats 5.0
        r2 = [-1.0] * 1000; r2[999], r2[17] = 0.0, -0.0          # -0.0 == 0.0: the first one
        r3 = list(long)                                          # all -inf: index 0
        r4 = [1.0] * 1003; r4[1002] = NAN                        # NaN in the scalar tail
        got = [F.argmax(Tensor.from_list(r)).to_list()[0] for r in (r1, r2, r3, r4)]
        assert got == [700, 17, 0, 1002]
    three_d = Tensor.from_list(rand_list_ops(2 * 3 * 5, 41), (2, 3, 5))
    assert F.argmax(three_d).shape == (6,)


@pytest.mark.parametrize("rows,cols,k", [(1, 1, 1), (3, 17, 5), (2, 33, 33), (1, 1536, 1), (2, 1536, 40),
                                         (1, 576, 100), (1, 1536, 1536)])
def test_topk_matches_stable_sort(rows, cols, k):
    x = [f32(round(v * 4) / 4) for v in rand_list_ops(rows * cols, 50, -10, 10)]  # many ties
    if cols > 3:
        x[2], x[cols - 1] = NAN, INF
    values, indices = F.topk(Tensor.from_list(x, (rows, cols)), k)
    assert values.shape == (rows, k) and indices.shape == (rows, k)
    want_v, want_i = [], []
    for r in rows_of(x, cols):
        v, i = topk_ref(r, k)
        want_v += v
        want_i += i
    assert indices.to_list() == want_i
    got_v = values.to_list()
    assert all((math.isnan(a) and math.isnan(b)) or a == b for a, b in zip(got_v, want_v))


def test_topk_k_out_of_range_in_engine():
    x = Tensor((2, 5))
    for k in (0, -1, 6):
        with pytest.raises(errors.IndexOutOfRangeError):
            F.topk(x, k)
        with pytest.raises(errors.IndexOutOfRangeError):  # the engine checks too
            check(lib.ce_topk(Tensor((2, 1)).ptr, Tensor((2, 1), "I32").ptr, x.ptr, k))


# ---------------------------------------------------------------------------------------------
# embedding
def _quant_available():
    try:
        Tensor.from_list([0.5] * 32, (1, 32), "Q8_0")
        return True
    except errors.EngineError:
        return False


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
def test_embedding_float_dtypes(dtype):
    V, D = 17, 33
    w = Tensor.from_list(rand_list_ops(V * D, 60), (V, D)).to(dtype)
    table = rows_of(w.to_list(), D)  # what the weights hold after conversion
    ids = [0, 16, 3, 3, 9, 1]
    out = F.embedding(w, ids)
    assert out.shape == (6, D)
    assert out.to_list() == [v for i in ids for v in table[i]]
    # ids of any shape, out preallocated with a strided outer dim
    buf = Tensor((6, D + 3))
    out2 = buf._view((6, D), buf.strides, 0)
    F.embedding(w, Tensor.from_list([[0, 16, 3], [3, 9, 1]], dtype="I32"), out=out2)
    assert out2.contiguous().to_list() == out.to_list()


def test_embedding_threads_and_range_errors():
    V, D = 50, 576
    w = Tensor.from_list(rand_list_ops(V * D, 61), (V, D))
    ids = [(7 * i) % V for i in range(200)]
    B.set_threads(1)
    one = F.embedding(w, ids).to_list()
    B.set_threads(2)
    assert F.embedding(w, ids).to_list() == one
    with pytest.raises(errors.IndexOutOfRangeError, match=r"id 50 at position 2"):
        F.embedding(w, [1, 2, 50])
    with pytest.raises(errors.IndexOutOfRangeError, match=r"id -3 at position 0"):
        F.embedding(w, [-3])
    assert F.embedding(w, []).shape == (0, D)


@pytest.mark.skipif(not _quant_available(), reason="quant.c (block dtypes) not implemented in this build")
@pytest.mark.parametrize("dtype", ["Q8_0", "Q4_0", "Q4_1"])
def test_embedding_block_dtypes(dtype):
    V, D = 5, 64
    w = Tensor.from_list(rand_list_ops(V * D, 62), (V, D)).to(dtype)
    table = rows_of(w.to_list(), D)  # dequantised through the converter
    ids = [4, 0, 2, 2]
    assert F.embedding(w, ids).to_list() == [v for i in ids for v in table[i]]


# ---------------------------------------------------------------------------------------------
# copy
def test_copy_casts_and_round_trips():
    x = rand_list_ops(3 * 17, 70, -100, 100) + [65504.0, 1e-8, -0.0]
    t = Tensor.from_list(x)
    for dtype in ("F16", "BF16"):
        h = t.to(dtype)
        back = h.to("F32").to_list()
        assert h.to(dtype).to_list() == back  # round trip is stable
        tol = 2 ** -11 if dtype == "F16" else 2 ** -8
        assert_close(back, x, tol, 1e-7)
    assert t.to("F16").to("BF16").dtype == "BF16"
    # float -> I32 truncates toward zero, saturates, NaN -> 0; I32 -> float exact for small ints
    f = Tensor.from_list([2.7, -2.7, 1e10, -1e10, NAN, INF, -0.5])
    assert f.to("I32").to_list() == [2, -2, 2 ** 31 - 1, -2 ** 31, 0, 2 ** 31 - 1, 0]
    i = Tensor.from_list([2 ** 31 - 1, -7, 16777217], dtype="I32")
    assert i.to("F32").to_list() == [2.0 ** 31, -7.0, 16777216.0]
    assert i.clone().to_list() == [2 ** 31 - 1, -7, 16777217]  # same dtype: bytes, exact


def test_copy_strided_and_reshaping():
    M, N = 5, 7
    x = rand_list_ops(M * N, 71)
    t = Tensor.from_list(x, (M, N))
    tt = t._view((N, M), (4, N * 4), 0)  # the transpose: last dim strided
    assert tt.contiguous().to_list() == [x[i * N + j] for j in range(N) for i in range(M)]
    # into an F16 destination with strided rows
    dbuf = Tensor((N, M + 2), "F16")
    d = dbuf._view((N, M), dbuf.strides, 0)
    F.copy_(d, tt)
    assert d.to("F32").to_list() == Tensor.from_list(tt.contiguous().to_list()).to("F16").to("F32").to_list()
    # same numel, different shapes: flat order
    flat = Tensor((M * N,))
    F.copy_(flat, t)
    assert flat.to_list() == x
    r = Tensor((7, 5))
    F.copy_(r, tt)
    assert r.to_list() == tt.contiguous().to_list()
    # different row lengths and both strided: element by element
    r3 = Tensor((35, 2))
    odd = r3._view((35,), (8,), 0)
    F.copy_(odd, tt)
    assert r3.to_list()[::2] == tt.contiguous().to_list()
    with pytest.raises(errors.ShapeError):
        F.copy_(Tensor((M, N + 1)), t)
    # threads: a large conversion splits across the pool
    big = Tensor.from_list(rand_list_ops(300000, 72))
    B.set_threads(1)
    one = big.to("F16").to_list()
    B.set_threads(2)
    assert big.to("F16").to_list() == one


@pytest.mark.skipif(not _quant_available(), reason="quant.c (block dtypes) not implemented in this build")
def test_copy_block_dtypes():
    x = rand_list_ops(3 * 64, 73)
    t = Tensor.from_list(x, (3, 64))
    for dtype in ("Q8_0", "Q4_0", "Q4_1"):
        q = Tensor((3, 64), dtype)
        F.copy_(q, t)
        back = Tensor((3, 64))
        F.copy_(back, q)
        ref = Tensor.from_list(x, (3, 64), dtype).to_list()  # quantised by the converter
        assert back.to_list() == ref
        assert q.clone().to_list() == ref                    # same block dtype: bytes
        half = Tensor((3, 64), "F16")
        F.copy_(half, q)                                      # block -> F16 via F32
        assert half.to_list() == Tensor.from_list(ref).to("F16").to_list()
    with pytest.raises(errors.ShapeError):
        F.copy_(Tensor((6, 32), "Q8_0"), t)  # block copies keep rows


# ---------------------------------------------------------------------------------------------
# bad arguments: every op raises a typed error, never crashes
def _engine_calls():
    """(name, thunk) pairs calling the C entry points directly with bad arguments."""
    N = ffi.NULL
    f = lambda *s: Tensor(s).ptr                      # noqa: E731
    i32 = lambda *s: Tensor(s, "I32").ptr             # noqa: E731
    f16 = lambda *s: Tensor(s, "F16").ptr             # noqa: E731
    pos = Tensor.from_list([0, 1], dtype="I32").ptr
    calls = []
    for op in ("silu", "gelu"):
        fn = getattr(lib, "ce_" + op)
        calls += [(op, lambda fn=fn: fn(N, f(3))), (op, lambda fn=fn: fn(f(3), N)),
                  (op, lambda fn=fn: fn(f(4), f(3))), (op, lambda fn=fn: fn(f(3), i32(3))),
                  (op, lambda fn=fn: fn(f16(3), f(3))), (op, lambda fn=fn: fn(f(3, 2), f(2, 3)))]
    for op in ("silu_mul", "add", "mul"):
        fn = getattr(lib, "ce_" + op)
        calls += [(op, lambda fn=fn: fn(N, f(3), f(3))), (op, lambda fn=fn: fn(f(3), N, f(3))),
                  (op, lambda fn=fn: fn(f(3), f(3), N)), (op, lambda fn=fn: fn(f(3), f(3), f(4))),
                  (op, lambda fn=fn: fn(f(2, 3), f(2, 3), f(3, 2))), (op, lambda fn=fn: fn(f(3), f(3), f16(3))),
                  (op, lambda fn=fn: fn(f(2, 4), f(2, 4), f(3, 4)))]
    calls += [("silu_mul", lambda: lib.ce_silu_mul(f(2, 3), f(2, 3), f(3)))]  # no broadcast for SwiGLU
    calls += [("scale", lambda: lib.ce_scale(N, f(3), 1.0)), ("scale", lambda: lib.ce_scale(f(3), i32(3), 1.0)),
              ("scale", lambda: lib.ce_scale(f(2), f(3), 1.0))]
    calls += [("rmsnorm", lambda: lib.ce_rmsnorm(N, f(3), N, 1e-5)),
              ("rmsnorm", lambda: lib.ce_rmsnorm(f(3), N, N, 1e-5)),
              ("rmsnorm", lambda: lib.ce_rmsnorm(f(3), f(3), f(4), 1e-5)),
              ("rmsnorm", lambda: lib.ce_rmsnorm(f(3), f(3), f16(3), 1e-5)),
              ("rmsnorm", lambda: lib.ce_rmsnorm(f(2, 0), f(2, 0), N, 1e-5)),
              ("rmsnorm", lambda: lib.ce_rmsnorm(f(3), f(3), N, -1.0)),
              ("rmsnorm", lambda: lib.ce_rmsnorm(f(3), f(3), N, float("nan"))),
              ("rmsnorm", lambda: lib.ce_rmsnorm(f(3), f16(3), N, 1e-5))]
    calls += [("softmax", lambda: lib.ce_softmax(N, f(3), 1.0)), ("softmax", lambda: lib.ce_softmax(f(3), N, 1.0)),
              ("softmax", lambda: lib.ce_softmax(f(3), f(4), 1.0)),
              ("softmax", lambda: lib.ce_softmax(f(2, 0), f(2, 0), 1.0)),
              ("softmax", lambda: lib.ce_softmax(f(3), f(3), 0.0)),
              ("softmax", lambda: lib.ce_softmax(f(3), f(3), float("inf"))),
              ("softmax", lambda: lib.ce_softmax(f(3), i32(3), 1.0))]
    calls += [("rope", lambda: lib.ce_rope(N, pos, 4, 4, 1e4, 0)), ("rope", lambda: lib.ce_rope(f(2, 4), N, 4, 4, 1e4, 0)),
              ("rope", lambda: lib.ce_rope(f(2, 1, 4), pos, 0, 0, 1e4, 0)),
              ("rope", lambda: lib.ce_rope(f(2, 1, 4), pos, 4, 4, 1e4, -1)),
              ("rope", lambda: lib.ce_rope(f(2, 1, 1, 4), pos, 4, 4, 1e4, 0)),
              ("rope", lambda: lib.ce_rope(f(3, 4), pos, 4, 4, 1e4, 0)),
              ("rope", lambda: lib.ce_rope(f(2, 4), f(2), 4, 4, 1e4, 0))]
    calls += [("embedding", lambda: lib.ce_embedding(N, f(4, 3), pos)),
              ("embedding", lambda: lib.ce_embedding(f(2, 3), N, pos)),
              ("embedding", lambda: lib.ce_embedding(f(2, 3), f(4, 3), N)),
              ("embedding", lambda: lib.ce_embedding(f(2, 4), f(4, 3), pos)),
              ("embedding", lambda: lib.ce_embedding(f(3, 3), f(4, 3), pos)),
              ("embedding", lambda: lib.ce_embedding(f(2, 3), f(4, 3), f(2))),
              ("embedding", lambda: lib.ce_embedding(f(2, 3), i32(4, 3), pos)),
              ("embedding", lambda: lib.ce_embedding(f(2, 3), f(4, 1, 3), pos)),
              ("embedding", lambda: lib.ce_embedding(f(2, 3), f(1, 3), pos)),      # id 1 >= vocab 1
              ("embedding", lambda: lib.ce_embedding(f16(2, 3), f(4, 3), pos))]
    calls += [("copy", lambda: lib.ce_copy(N, f(3))), ("copy", lambda: lib.ce_copy(f(3), N)),
              ("copy", lambda: lib.ce_copy(f(3), f(4))), ("copy", lambda: lib.ce_copy(f(0), f(1)))]
    calls += [("argmax", lambda: lib.ce_argmax(N, f(2, 3))), ("argmax", lambda: lib.ce_argmax(i32(2), N)),
              ("argmax", lambda: lib.ce_argmax(f(2), f(2, 3))), ("argmax", lambda: lib.ce_argmax(i32(3), f(2, 3))),
              ("argmax", lambda: lib.ce_argmax(i32(2), i32(2, 3))), ("argmax", lambda: lib.ce_argmax(i32(2), f(2, 0)))]
    calls += [("topk", lambda: lib.ce_topk(N, i32(2, 1), f(2, 3), 1)),
              ("topk", lambda: lib.ce_topk(f(2, 1), N, f(2, 3), 1)),
              ("topk", lambda: lib.ce_topk(f(2, 1), i32(2, 1), N, 1)),
              ("topk", lambda: lib.ce_topk(i32(2, 1), i32(2, 1), f(2, 3), 1)),
              ("topk", lambda: lib.ce_topk(f(2, 1), f(2, 1), f(2, 3), 1)),
              ("topk", lambda: lib.ce_topk(f(2, 2), i32(2, 1), f(2, 3), 1)),
              ("topk", lambda: lib.ce_topk(f(2, 1), i32(2, 1), f16(2, 3), 1)),
              ("topk", lambda: lib.ce_topk(f(2, 0), i32(2, 0), f(2, 0), 0))]
    return calls


def test_engine_entry_points_reject_bad_arguments():
    for name, call in _engine_calls():
        status = call()
        assert status < 0, f"{name}: a bad call returned {status}"
        with pytest.raises(errors.ToolkitError):
            check(status)
        assert ffi.string(lib.ce_last_error()), name


def test_functional_ops_raise_typed_errors():
    x, w = Tensor.from_list(rand_list_ops(6, 80), (2, 3)), Tensor((3,))
    bad = [
        lambda: F.silu(None), lambda: F.gelu(x, out=Tensor((3, 2))), lambda: F.silu_mul(x, Tensor((2, 4))),
        lambda: F.add(x, None), lambda: F.mul(x, Tensor((2, 3), "F16")), lambda: F.scale(Tensor((2,), "I32"), 2.0),
        lambda: F.rms_norm(x, Tensor((4,))), lambda: F.rms_norm(Tensor((2, 0))), lambda: F.rms_norm(None),
        lambda: F.softmax(Tensor((3, 0))), lambda: F.softmax(x, scale=-1.0), lambda: F.softmax(Tensor((3,), "BF16")),
        lambda: F.rope_(x, [0, 1], head_dim=4), lambda: F.rope_(None, [0], head_dim=2),
        lambda: F.embedding(Tensor((4, 3)), [4]), lambda: F.embedding(Tensor((4, 3)), None),
        lambda: F.embedding(Tensor((4, 3)), [0.5]),
        lambda: F.argmax(Tensor((2, 0))), lambda: F.argmax(Tensor((2, 3), "I32")),
        lambda: F.topk(x, 4), lambda: F.topk(x, 0), lambda: F.topk(Tensor((1, 0)), 1),
        lambda: F.copy_(Tensor((5,)), x), lambda: F.copy_(None, x),
        lambda: F.rms_norm(x, w, eps=float("inf")),
    ]
    for i, call in enumerate(bad):
        with pytest.raises(errors.ToolkitError):
            call()
            pytest.fail(f"bad call #{i} did not raise")


def rand_list_ops(n, seed, lo=-4.0, hi=4.0):
    return rand_list(n, seed, lo, hi)


def test_all_finite_finds_any_nan_or_infinity_in_the_engine():
    big = 3.0e38  # finite, and 0 * big is 0: only a real infinity or NaN makes a row's dot product NaN
    assert F.all_finite(Tensor.from_list([[1.0, -big], [0.0, 1e-45]]))
    for bad in (float("inf"), float("-inf"), float("nan")):
        t = Tensor.from_list([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
        t[2, 1] = bad
        assert not F.all_finite(t)
        assert not F.all_finite(t.to("F16"))
    assert F.all_finite(Tensor((0, 4)))
