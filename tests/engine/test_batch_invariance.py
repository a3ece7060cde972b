"""Batch invariance (contract 3 of the brief): every row of a matmul has the same bits whatever the
number of rows M of x in the call and the row's position among them, for every weight dtype, with
ce_matmul and ce_matmul_n, on any thread count. So a sequence's logits do not depend on what else
shares its batched pass. The packed GEMM (opt-in, set_batch_invariant(False)) is checked too."""
import math

import pytest

from toolkit.core.engine import backend as B
from toolkit.core.engine import functional as F
from toolkit.core.engine.backend import Tensor
from test_matmul import WDTYPES, rand_list

MS = [1, 3, 17, 64, 200]


def k_for(dtype):
    return 96 if dtype.startswith("Q") else 45  # 45: the F32/F16/BF16 tails (K % 32, K % 8)


def weights(dtype, n, k, seed):
    return Tensor.from_list(rand_list(n * k, seed), (n, k), dtype)


def rows_of(t, m, n):
    flat = t.to_list()
    return [flat[r * n:(r + 1) * n] for r in range(m)]


@pytest.mark.parametrize("dtype", WDTYPES)
def test_rows_bit_identical_for_any_m_and_position(dtype):
    k, n, total = k_for(dtype), 37, max(MS)
    x = rand_list(total * k, 5)
    # a few rows far from the others in magnitude: Q4's per-row scaling must stay per row
    for r in (7, 120):
        x[r * k:(r + 1) * k] = [math.ldexp(v, -30 + r // 10) for v in x[r * k:(r + 1) * k]]
    w = weights(dtype, n, k, 6)
    B.set_threads(1)
    alone = [F.matmul(Tensor.from_list(x[r * k:(r + 1) * k], (1, k)), w).to_list() for r in range(total)]
    for threads in (1, 2):
        B.set_threads(threads)
        for m in MS:
            for start in sorted({0, min(1, total - m), total - m}):
                got = rows_of(F.matmul(Tensor.from_list(x[start * k:(start + m) * k], (m, k)), w), m, n)
                for r in range(m):
                    assert got[r] == alone[start + r], (dtype, m, start, r, threads)


@pytest.mark.parametrize("m", MS)
def test_matmul_n_rows_bit_identical_for_any_m(m):
    k = 96
    ws = [weights(dt, n, k, 10 + i) for i, (dt, n) in enumerate([("Q4_1", 20), ("Q4_0", 9), ("Q8_0", 33),
                                                                   ("BF16", 7), ("F32", 16), ("Q4_1", 5)])]
    x = rand_list(m * k, 40 + m)
    outs = F.matmul_n(Tensor.from_list(x, (m, k)), ws)
    for r in range(m):
        xr = Tensor.from_list(x[r * k:(r + 1) * k], (1, k))
        for w, o in zip(ws, outs):
            n = w.shape[0]
            assert o.to_list()[r * n:(r + 1) * n] == F.matmul(xr, w).to_list(), (m, r, w.dtype)


def test_model_shapes_rows_bit_identical():
    """The default model's prefill shapes (K = 576 and 1536) on both threads, both Q4 paths."""
    for path in ("subnormal", "normal"):
        B.set_q4_path(path)
        for k, n in [(576, 192), (1536, 96)]:
            w = weights("Q4_1", n, k, k)
            x = rand_list(24 * k, k + 1)
            B.set_threads(2)
            full = rows_of(F.matmul(Tensor.from_list(x, (24, k)), w), 24, n)
            for r in (0, 9, 23):
                assert full[r] == F.matmul(Tensor.from_list(x[r * k:(r + 1) * k], (1, k)), w).to_list()


def test_the_default_is_invariant_and_the_packed_gemm_still_agrees():
    assert B.get_batch_invariant() is True
    m, n, k = 40, 50, 576
    x = Tensor.from_list(rand_list(m * k, 3), (m, k))
    try:
        for dtype in ("Q4_1", "F16"):
            w = weights(dtype, n, k, 4)
            inv = F.matmul(x, w).to_list()
            B.set_batch_invariant(False)
            res = {}
            for threads in (1, 2):
                B.set_threads(threads)
                res[threads] = F.matmul(x, w).to_list()
            B.set_batch_invariant(True)
            assert res[1] == res[2]
            l1 = [math.fsum(abs(v) for v in x.to_list()[r * k:(r + 1) * k]) for r in range(m)]
            for j, (a, b) in enumerate(zip(inv, res[1])):
                assert abs(a - b) <= 4e-6 * l1[j // n], (dtype, j, a, b)
    finally:
        B.set_batch_invariant(True)
    with pytest.raises(TypeError):
        B.set_batch_invariant(1)
