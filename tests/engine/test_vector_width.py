"""The 512-bit kernels (gemv.c dot_tile_z / dot_tile_qz, gemm.c micro_z) against the 256-bit ones
and the scalar twin, and the start-up probe that picks the width (vecwidth.c).

The GEMV must give the same bits at either width, for any thread count, as the scalar twin
(batch and thread-count invariance rest on every path computing each output in one order). The
packed GEMM (opt-in, not batch invariant) must give the same bits at either width too (each
output sums its products in k order either way) and the scalar reference's tolerance. Where the
CPU (or the build) lacks AVX-512 the 512-bit cases are skipped with the reason; the compile-only
check in test_build.py still builds them."""
import math
import os
import subprocess
import sys

import pytest

from toolkit import errors
from toolkit.core.engine import backend as B
from toolkit.core.engine import functional as F
from toolkit.core.engine.backend import Tensor
from test_matmul import make, rand_list

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WHY_NOT_512 = B.vector_probe()["reason"]
needs_512 = pytest.mark.skipif(bool(WHY_NOT_512), reason=f"512-bit kernels not tested here: {WHY_NOT_512}")
WIDTHS = [256] if WHY_NOT_512 else [256, 512]
# K: one block, blocks plus an 8-element step, plus a ragged tail, and model sizes; N: odd, around
# the tile sizes (4, 2, 1) and the 16-row thread split
FLOAT_K = [1, 7, 32, 40, 77, 203, 576]
BLOCK_K = [32, 96, 576]
NS = [1, 5, 17, 33]


@needs_512
@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1"])
def test_gemv_512_bit_identical_to_256_and_scalar(dtype):
    ks = BLOCK_K if dtype.startswith("Q") else FLOAT_K
    paths = ["subnormal", "normal"] if dtype.startswith("Q4") else [None]
    for k in ks:
        for n in NS:
            for m in range(1, 10):
                _, xt, wt = make(m, n, k, dtype, 7 * k + 3 * n + m)
                B.set_simd(False)
                want = F.matmul(xt, wt).to_list()
                B.set_simd(True)
                for path in paths:
                    if path:
                        B.set_q4_path(path)
                    for bits in WIDTHS:
                        B.set_vector_bits(bits)
                        for threads in (1, 2):
                            B.set_threads(threads)
                            assert F.matmul(xt, wt).to_list() == want, (dtype, m, n, k, path, bits, threads)


@needs_512
def test_gemv_512_matmul_n_and_model_shapes():
    """matmul_n with mixed dtypes (one job over several weights) and the default model's shapes"""
    k = 576
    ws = [make(1, n, k, dt, 30 + n)[2] for n, dt in [(64, "Q4_1"), (31, "F16"), (33, "Q8_0"), (17, "BF16")]]
    for m in (1, 2, 5):
        xt = Tensor.from_list(rand_list(m * k, 40 + m), (m, k))
        got = {}
        for bits in WIDTHS:
            B.set_vector_bits(bits)
            got[bits] = [o.to_list() for o in F.matmul_n(xt, ws)]
        assert got[512] == got[256]
    cases = [make(3, 1536, 576, "Q8_0", 5)[1:], make(2, 576, 1536, "F32", 6)[1:]]
    # many rows (blocks of x, the 4-row zmm tiles with odd rows left) and a K past XQ_LOCAL
    cases += [make(67, 37, 576, dt, 7)[1:] for dt in ("F16", "BF16", "Q8_0", "Q4_1")]
    cases += [make(2, 9, 8224, dt, 8)[1:] for dt in ("BF16", "Q4_0")]
    for x, w in cases:
        B.set_vector_bits(256)
        a = F.matmul(x, w).to_list()
        B.set_vector_bits(512)
        assert F.matmul(x, w).to_list() == a


@pytest.mark.parametrize("dtype", ["F32", "Q4_1"])
def test_packed_gemm_both_widths_same_bits_and_scalar_tolerance(dtype):
    """the opt-in packed GEMM: odd column counts (an odd number of 16-column groups, and partial
    groups), K past one depth block, row counts around the 6-row microkernel"""
    try:
        for m, n, k in [(8, 50, 96), (13, 33, 320), (40, 17, 64), (9, 96, 32), (100, 20, 64)]:
            x, xt, wt = make(m, n, k, dtype, m + n + k)
            B.set_batch_invariant(True)
            B.set_simd(False)
            ref = F.matmul(xt, wt).to_list()
            B.set_simd(True)
            B.set_batch_invariant(False)
            got = {}
            for bits in WIDTHS:
                B.set_vector_bits(bits)
                for threads in (1, 2):
                    B.set_threads(threads)
                    got[bits, threads] = F.matmul(xt, wt).to_list()
            first = got[256, 1]
            assert all(v == first for v in got.values()), (m, n, k)
            l1 = [math.fsum(abs(v) for v in x[r * k:(r + 1) * k]) for r in range(m)]
            for j, (a, b) in enumerate(zip(ref, first)):
                assert abs(a - b) <= 4e-6 * l1[j // n], (dtype, m, n, k, j, a, b)
    finally:
        B.set_batch_invariant(True)


def test_probe_choice_and_timings_in_build_info():
    B.set_vector_bits("auto")
    p = B.vector_probe()
    assert p["setting"] == "auto"
    info = B.build_info()
    if not p["available"]:
        assert p["bits"] == 256 and f"vec=256 (512-bit kernels unavailable: {p['reason']}" in info
        with pytest.raises(errors.InvalidArgumentError, match="not available"):
            B.set_vector_bits(512)
        return
    assert 0 < p["ns_256"] < 100 and 0 < p["ns_512"] < 100
    # the rule: 512 only where 512-bit FMAs give at least 1.3x the flops of 256-bit ones
    assert p["bits"] == (512 if p["flops_ratio"] >= 1.3 else 256)
    assert f"vec={p['bits']} (auto; probe: FMA 256-bit {p['ns_256']:.3f} ns, 512-bit {p['ns_512']:.3f} ns" in info


@needs_512
def test_forcing_each_width_and_bad_values():
    for bits in (512, 256):
        B.set_vector_bits(bits)
        assert B.get_vector_bits() == bits and B.vector_probe()["setting"] == bits
        assert f"vec={bits} (forced" in B.build_info()
    with pytest.raises(errors.InvalidArgumentError):
        B.set_vector_bits(384)
    with pytest.raises(errors.InvalidArgumentError):
        B.set_vector_bits(0)
    with pytest.raises(errors.ArgumentTypeError):
        B.set_vector_bits("512")
    with pytest.raises(errors.ArgumentTypeError):
        B.set_vector_bits(True)


def _run(code, value):
    env = dict(os.environ, TOOLKIT_VECTOR_BITS=value, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


def test_environment_variable_sets_the_start_width():
    code = "from toolkit.core.engine import backend as B; p = B.vector_probe(); print(p['setting'], p['bits'])"
    r = _run(code, "256")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["256", "256"]
    r = _run(code, "512")
    assert r.returncode == 0, r.stderr
    # where 512 is unavailable the engine stays at 256 and build_info says the setting was ignored
    assert r.stdout.split() == (["auto", "256"] if WHY_NOT_512 else ["512", "512"])
    r = _run(code, "wide")
    assert r.returncode != 0 and "TOOLKIT_VECTOR_BITS must be one of 256, 512, auto" in r.stderr



@needs_512
def test_default_model_same_bits_at_both_widths(model):
    """the real model (Q4_1 weights, F32 norms/embeddings) end to end: logits of a prompt (prefill,
    M > 2) and of a one-token step (decode) are the same bits whichever width runs"""
    ids = model.tokenizer.encode("The capital of France is")
    got = {}
    for bits in (256, 512):
        B.set_vector_bits(bits)
        got[bits] = (model.logits(ids).to_list(), model.logits(ids[:1]).to_list())
    assert got[512] == got[256]
