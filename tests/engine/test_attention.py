"""ce_attention (causal grouped-query attention over a KV cache) against a naive float64 reference.

Covers decode (T = 1 against a longer cache), prefill (T = n_kv), chunked prefill (T > 1 against a
cache), F16 caches, strided q, the probabilities (rows sum to 1, exact zeros above the diagonal),
SIMD vs scalar, 1 vs 2 threads bit for bit, and argument validation.
"""
import math

import pytest

from toolkit import errors
from toolkit.core.engine import backend as B
from toolkit.core.engine import functional as F
from toolkit.core.engine._lib import check, ffi, lib
from toolkit.core.engine.backend import Tensor
from floats import f32, rand_list


def attention_ref(q, k, v, pos, T, Hq, Hkv, D, n_kv, scale):
    """out [T*Hq*D] and probs [Hq][T][n_kv] in float64; q/k/v flat row-major lists."""
    group = Hq // Hkv
    out, probs = [0.0] * (T * Hq * D), [[[0.0] * n_kv for _ in range(T)] for _ in range(Hq)]
    for t in range(T):
        for h in range(Hq):
            hk = h // group
            qv = q[(t * Hq + h) * D:(t * Hq + h + 1) * D]
            s = [scale * sum(qv[d] * k[(j * Hkv + hk) * D + d] for d in range(D)) for j in range(pos[t] + 1)]
            m = max(s)
            e = [math.exp(x - m) for x in s]
            z = sum(e)
            for j, ej in enumerate(e):
                probs[h][t][j] = ej / z
                for d in range(D):
                    out[(t * Hq + h) * D + d] += ej / z * v[(j * Hkv + hk) * D + d]
    return out, probs


def run_case(T, Hq, Hkv, D, S, n_kv, pos, kv_dtype="F32", seed=0):
    q = rand_list(T * Hq * D, seed)
    k = rand_list(S * Hkv * D, seed + 1)
    v = rand_list(S * Hkv * D, seed + 2)
    tk = Tensor.from_list(k, (S, Hkv, D)).to(kv_dtype)
    tv = Tensor.from_list(v, (S, Hkv, D)).to(kv_dtype)
    k, v = tk.to("F32").to_list(), tv.to("F32").to_list()  # what the cache holds
    tq = Tensor.from_list(q, (T, Hq, D))
    scale = 1.0 / math.sqrt(D)
    out, probs = F.scaled_dot_product_attention(tq, tk, tv, pos, n_kv=n_kv, scale=scale, return_probs=True)
    want_out, want_probs = attention_ref(q, k, v, pos, T, Hq, Hkv, D, n_kv, f32(scale))
    return out, probs, want_out, want_probs


def assert_close(got, want, tol):
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert abs(g - w) <= tol * (1 + abs(w)), f"[{i}]: got {g!r}, want {w!r}"


CASES = [
    # T, Hq, Hkv, D, S, n_kv, pos
    (1, 4, 2, 8, 16, 13, [12]),                 # decode against a cache
    (1, 9, 3, 64, 40, 40, [39]),                # SmolLM-like heads, full cache
    (5, 6, 2, 17, 5, 5, [0, 1, 2, 3, 4]),       # prefill
    (3, 3, 1, 33, 48, 40, [37, 38, 39]),        # chunked prefill, multi-query
    (4, 2, 2, 3, 9, 9, [0, 2, 5, 8]),           # sparse positions, plain MHA
    (2, 1, 1, 1, 4, 3, [0, 2]),                 # D = 1
]


@pytest.mark.parametrize("kv_dtype", ["F32", "F16"])
@pytest.mark.parametrize("case", CASES)
def test_attention_matches_reference(case, kv_dtype):
    T, Hq, Hkv, D, S, n_kv, pos = case
    for simd in (False, True):
        B.set_simd(simd)
        out, probs, want_out, want_probs = run_case(T, Hq, Hkv, D, S, n_kv, pos, kv_dtype)
        assert out.shape == (T, Hq, D) and probs.shape == (Hq, T, n_kv)
        assert_close(out.to_list(), want_out, 2e-6)
        p = probs.tolist()
        for h in range(Hq):
            for t in range(T):
                row = p[h][t]
                assert all(x == 0.0 for x in row[pos[t] + 1:])  # exact zeros where masked
                assert abs(sum(row) - 1.0) < 1e-5
                assert_close(row, want_probs[h][t], 2e-6)


def test_attention_simd_close_to_scalar_and_threads_identical():
    T, Hq, Hkv, D, S = 16, 8, 2, 64, 80
    n_kv, pos = 70, list(range(54, 70))
    q = Tensor.from_list(rand_list(T * Hq * D, 10), (T, Hq, D))
    k = Tensor.from_list(rand_list(S * Hkv * D, 11), (S, Hkv, D))
    v = Tensor.from_list(rand_list(S * Hkv * D, 12), (S, Hkv, D))
    results = {}
    for simd in (False, True):
        for threads in (1, 2, 3, 7):  # more threads than cores: late ones are left out (ce_parallel_dyn)
            B.set_simd(simd)
            B.set_threads(threads)
            out, probs = F.scaled_dot_product_attention(q, k, v, pos, n_kv=n_kv, return_probs=True)
            results[simd, threads] = (out.to_list(), probs.to_list())
    for simd in (False, True):
        for threads in (2, 3, 7):  # deterministic regardless of thread count
            assert results[simd, 1] == results[simd, threads]
    assert_close(results[True, 1][0], results[False, 1][0], 1e-5)
    assert_close(results[True, 1][1], results[False, 1][1], 1e-5)


def test_attention_chunked_decode_same_for_any_threads():
    """One decode query over 1000 keys: 4 chunks per kv head, merged by the combine pass; both
    passes hand out their work by atomic claims, so any number of threads gives the same bits."""
    Hq, Hkv, D, S = 9, 3, 64, 1000
    q = Tensor.from_list(rand_list(Hq * D, 30), (1, Hq, D))
    k = Tensor.from_list(rand_list(S * Hkv * D, 31), (S, Hkv, D))
    v = Tensor.from_list(rand_list(S * Hkv * D, 32), (S, Hkv, D))
    want = None
    for threads in (1, 2, 3, 7):
        B.set_threads(threads)
        for _ in range(3):
            out, probs = F.scaled_dot_product_attention(q, k, v, [S - 1], n_kv=S, return_probs=True)
            got = (out.to_list(), probs.to_list())
            want = want or got
            assert got == want, threads


def test_attention_long_cache_and_strided_q():
    # a long context: per-thread scratch holds n_kv scores (no stack arrays)
    Hq, Hkv, D, S = 2, 1, 8, 5000
    k = Tensor.from_list(rand_list(S * Hkv * D, 20, -0.5, 0.5), (S, Hkv, D)).to("F16")
    v = Tensor.from_list(rand_list(S * Hkv * D, 21), (S, Hkv, D)).to("F16")
    # q is the first Hq heads of a fused [1, Hq + 2 * Hkv, D] qkv buffer: strided
    qkv = Tensor.from_list(rand_list((Hq + 2 * Hkv) * D, 22), (1, Hq + 2 * Hkv, D))
    q = qkv._view((1, Hq, D), qkv.strides, 0)
    out, probs = F.scaled_dot_product_attention(q, k, v, [4999], n_kv=5000, return_probs=True)
    for row in probs.tolist():
        assert abs(sum(row[0]) - 1.0) < 1e-4
    same = F.scaled_dot_product_attention(q.contiguous(), k, v, [4999], n_kv=5000)
    assert out.to_list() == same.to_list()


def test_attention_empty_queries_is_a_no_op():
    k = Tensor((4, 1, 8))
    out = F.scaled_dot_product_attention(Tensor((0, 2, 8)), k, k, [], n_kv=4)
    assert out.shape == (0, 2, 8)


def test_attention_rejects_bad_arguments():
    q, k, v = Tensor((2, 4, 8)), Tensor((6, 2, 8)), Tensor((6, 2, 8))
    pos = [3, 4]
    sdpa = F.scaled_dot_product_attention
    with pytest.raises(errors.ShapeError):
        sdpa(Tensor((2, 3, 8)), k, v, pos, n_kv=5)              # 3 query heads, 2 kv heads
    with pytest.raises(errors.ShapeError):
        sdpa(Tensor((2, 4, 4)), k, v, pos, n_kv=5)              # head dims differ
    with pytest.raises(errors.ShapeError):
        sdpa(q, k, Tensor((6, 1, 8)), pos, n_kv=5)              # k and v differ
    with pytest.raises(errors.IndexOutOfRangeError):
        sdpa(q, k, v, pos, n_kv=7)                              # n_kv > cache rows
    with pytest.raises(errors.IndexOutOfRangeError):
        sdpa(q, k, v, [3, 5], n_kv=5)                           # pos >= n_kv
    with pytest.raises(errors.IndexOutOfRangeError):
        sdpa(q, k, v, [-1, 0], n_kv=5)
    with pytest.raises(errors.ShapeError):
        sdpa(q, k, v, [3], n_kv=5)                              # one position per query
    with pytest.raises(errors.ShapeError):
        sdpa(q, k, v, pos, n_kv=5, probs=Tensor((4, 2, 6)))     # probs must be [Hq, T, n_kv]
    with pytest.raises(errors.ShapeError):
        sdpa(q, k, v, pos, n_kv=5, out=Tensor((2, 4, 7)))
    with pytest.raises(errors.DTypeError):
        sdpa(q, k.to("BF16"), v, pos, n_kv=5)
    with pytest.raises(errors.DTypeError):
        sdpa(q.to("F16"), k, v, pos, n_kv=5)
    with pytest.raises(errors.InvalidArgumentError):
        sdpa(q, k, v, pos, n_kv=5, scale=float("nan"))
    with pytest.raises(errors.ToolkitError):
        sdpa(None, k, v, pos)
    # the C entry point itself, with NULLs and wrong ranks
    N, pt = ffi.NULL, Tensor.from_list(pos, dtype="I32")
    bad = [(N, q, k, v, pt), (q, N, k, v, pt), (q, q, N, v, pt), (q, q, k, N, pt), (q, q, k, v, N),
           (q, Tensor((2, 32)), k, v, pt), (q, q, Tensor((6, 16)), v, pt), (q, q, k, v, Tensor((2,)))]
    for args in bad:
        ptrs = [a if a is N else a.ptr for a in args]
        status = lib.ce_attention(*ptrs, 5, 0.35, N)
        assert status < 0
        with pytest.raises(errors.ToolkitError):
            check(status)
    assert lib.ce_attention(q.ptr, q.ptr, k.ptr, v.ptr, pt.ptr, 0, 0.35, N) == lib.CE_ERR_RANGE
