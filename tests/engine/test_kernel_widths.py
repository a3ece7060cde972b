"""The vector width per kernel family (vecwidth.c's table): under "auto" the GEMV's F32/F16/BF16
tiles over M > 2 rows of x run at 512 bits wherever the 512-bit kernels can, every other family at
the probe's width; a forced width (set_vector_bits, TOOLKIT_VECTOR_BITS) applies to every family.
Widths change speed only: whatever mix of widths one call runs (matmul_n over float and quantized
weights), every output must have the scalar twin's bits."""
import os
import subprocess
import sys

import pytest

from toolkit.core.engine import backend as B
from toolkit.core.engine import functional as F
from toolkit.core.engine.backend import Tensor
from test_matmul import make, rand_list

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAMILIES = {"gemv_float_decode", "gemv_float_tiles", "gemv_quant", "gemm", "attention"}
WHY_NOT_512 = B.vector_probe()["reason"]


def test_auto_widths_follow_the_table():
    B.set_vector_bits("auto")
    p = B.vector_probe()
    assert set(p["kernels"]) == FAMILIES
    probe_bits = p["bits"]
    assert probe_bits == (512 if p["available"] and p["flops_ratio"] >= 1.3 else 256)
    tiles = 512 if p["available"] else 256
    assert p["kernels"] == {f: tiles if f == "gemv_float_tiles" else probe_bits for f in FAMILIES}
    info = B.build_info()
    # build_info names the families that run at another width than vec= says
    assert ("; gemv_float_tiles 512)" in info) == (tiles != probe_bits), info
    if not p["available"]:
        assert f"512-bit kernels unavailable: {WHY_NOT_512}" in info


@pytest.mark.parametrize("bits", [256, 512])
def test_forced_width_applies_to_every_family(bits):
    if bits == 512 and WHY_NOT_512:
        pytest.skip(f"512-bit kernels not available here: {WHY_NOT_512}")
    B.set_vector_bits(bits)
    p = B.vector_probe()
    assert p["setting"] == bits and p["bits"] == bits
    assert p["kernels"] == {f: bits for f in FAMILIES}
    assert "gemv_float_tiles" not in B.build_info()


def _scalar(fn):
    B.set_simd(False)
    try:
        return fn()
    finally:
        B.set_simd(True)


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
def test_auto_float_tiles_bit_identical_to_scalar_twin(dtype):
    """M > 2 runs the float tiles (512 under auto where available), M <= 2 the decode loop (the
    probe's width): both the scalar twin's bits, and those of either forced width"""
    for m, n, k in [(1, 17, 77), (2, 5, 576), (3, 33, 40), (4, 9, 203), (7, 16, 576), (67, 37, 96)]:
        _, xt, wt = make(m, n, k, dtype, 11 * m + n)
        want = _scalar(lambda: F.matmul(xt, wt).to_list())
        for bits in ["auto", 256] + ([] if WHY_NOT_512 else [512]):
            B.set_vector_bits(bits)
            for threads in (1, 2):
                B.set_threads(threads)
                assert F.matmul(xt, wt).to_list() == want, (dtype, m, n, k, bits, threads)


def test_auto_mixed_matmul_n_bit_identical_to_scalar_twin():
    """one GEMV job over float and quantized weights runs each at its family's width (under auto on
    a 512-bit CPU whose probe says 256: the float tiles at 512, Q4/Q8 at 256), both Q4 paths"""
    k = 576
    ws = [make(1, n, k, dt, 50 + n)[2] for n, dt in [(31, "F32"), (64, "Q4_1"), (17, "BF16"), (9, "Q4_0"),
                                                     (33, "Q8_0"), (5, "F16")]]
    B.set_vector_bits("auto")
    for m in (1, 2, 3, 5, 9):
        xt = Tensor.from_list(rand_list(m * k, 60 + m), (m, k))
        want = _scalar(lambda: [o.to_list() for o in F.matmul_n(xt, ws)])
        for path in ("subnormal", "normal"):
            B.set_q4_path(path)
            assert [o.to_list() for o in F.matmul_n(xt, ws)] == want, (m, path)


def test_environment_variable_forces_every_family():
    code = "from toolkit.core.engine import backend as B; print(sorted(set(B.vector_probe()['kernels'].values())))"
    env = dict(os.environ, TOOLKIT_VECTOR_BITS="256", PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[256]"
