"""The two Q4 GEMV unpackings (gemv.c, simd_load.h): nibbles read in place as subnormal floats
(q4_bits, fast on AMD Zen) and converted to normal floats (q4_ints, fast on Intel, whose cores take
a microcode assist per subnormal FMA operand). They must give the same bits on any machine, the
same bits as the scalar twin and the float64 reference's tolerance, and be selectable from Python and the environment; the start-up probe's
choice and timings must show in build_info()."""
import math
import os
import struct
import subprocess
import sys

import pytest

from toolkit import errors
from toolkit.core.engine import backend as B
from toolkit.core.engine import functional as F
from toolkit.core.engine._lib import ffi
from toolkit.core.engine.backend import Tensor
from test_matmul import check_q4_against_reference, decode_weights, make, rand_list

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# awkward shapes: one block, odd row counts around the tile sizes (4, 2, 1) and the 16-row thread
# split, several rows of x (pairs and a lone last row), K past the per-thread xq copy (XQ_LOCAL)
SHAPES = [(1, 1, 32), (1, 5, 64), (1, 17, 96), (2, 3, 32), (3, 33, 160), (5, 50, 576), (7, 129, 64),
          (1, 2001, 576), (2, 7, 8192), (7, 9, 1536)]


def have_512():
    """why the 512-bit kernels cannot run here, or "" """
    return B.vector_probe()["reason"]


WIDTHS = [256] + ([] if have_512() else [512])


def both_paths(fn):
    """fn() with each Q4 path and each vector width compiled in; every width must agree, so the
    results of the 256-bit kernels are returned"""
    out = {}
    for bits in WIDTHS:
        B.set_vector_bits(bits)
        for path in ("subnormal", "normal"):
            B.set_q4_path(path)
            assert B.get_q4_path() == path
            out[path, bits] = fn()
    B.set_vector_bits(256)
    for key, value in out.items():
        assert value == out["subnormal", 256], key
    return out["subnormal", 256], out["normal", 256]


def test_512_bit_kernels_run_where_the_cpu_has_them():
    why = have_512()
    if why:
        pytest.skip(f"512-bit kernels not tested here: {why}")
    assert 512 in WIDTHS
    B.set_vector_bits(512)
    assert B.get_vector_bits() == 512 and "vec=512" in B.build_info()
    with pytest.raises(errors.InvalidArgumentError):
        B.set_vector_bits(384)
    with pytest.raises(errors.ArgumentTypeError):
        B.set_vector_bits("512")


def x_with_zeros_and_range(m, k, seed):
    """x with exact zeros and magnitudes over 2^-60 .. 2^10 of one another (within the range where
    both paths are documented to agree bit for bit: 2^-76 of each row's largest)."""
    x = rand_list(m * k, seed)
    for i in range(0, len(x), 7):
        x[i] = 0.0
    for i in range(3, len(x), 11):
        x[i] = math.ldexp(x[i], -60 + (i % 70))
    return x


@pytest.mark.parametrize("dtype", ["Q4_0", "Q4_1"])
def test_paths_bit_identical_and_match_reference(dtype):
    for i, (m, n, k) in enumerate(SHAPES):
        _, _, wt = make(m, n, k, dtype, 300 + i)
        x = x_with_zeros_and_range(m, k, 400 + i)
        xt = Tensor.from_list(x, (m, k))
        for threads in (1, 2):
            B.set_threads(threads)
            sub, norm = both_paths(lambda: F.matmul(xt, wt).to_list())
            assert sub == norm, (dtype, m, n, k, threads)
        if n * k <= 64 * 1024:  # the float64 reference is slow in Python: small shapes only
            w_rows = decode_weights(wt)
            check_q4_against_reference(norm, [x[r * k:(r + 1) * k] for r in range(m)], wt, w_rows)
        B.set_simd(False)  # the scalar twin (matmul_scalar.c): the same bits, lane by lane
        assert F.matmul(xt, wt).to_list() == norm, (dtype, m, n, k)
        B.set_simd(True)


@pytest.mark.parametrize("scale", [-26, -10, 0, 40, 100])
def test_paths_agree_at_any_activation_scale(scale):
    """build_xq rescales x by powers of two chosen from its largest |x|, each path differently,
    both exactly, so they agree at every magnitude down to a largest |x| of 2^-27 (below it the
    subnormal path's products underflow)."""
    m, n, k = 2, 37, 576
    for dtype in ("Q4_0", "Q4_1"):
        x, _, wt = make(m, n, k, dtype, 17)
        xt = Tensor.from_list([math.ldexp(v, scale) for v in x], (m, k))
        sub, norm = both_paths(lambda: F.matmul(xt, wt).to_list())
        assert sub == norm, (dtype, scale)


def test_normal_path_stays_exact_for_tiny_activations():
    """Where the subnormal path underflows (activations near 2^-100), the normal one still scales
    exactly: its result is the unscaled one times the same power of two."""
    m, n, k = 1, 37, 576
    B.set_q4_path("normal")
    for dtype in ("Q4_0", "Q4_1"):
        x, xt, wt = make(m, n, k, dtype, 18)
        base = F.matmul(xt, wt).to_list()
        got = F.matmul(Tensor.from_list([math.ldexp(v, -100) for v in x], (m, k)), wt).to_list()
        assert got == [math.ldexp(v, -100) for v in base], dtype


def test_q4_0_scales_past_f16_range():
    """Q4_0's -8 rides in the m term (m = -8 d, gemv.c's build_xq): with d above 8192, -8 d does not
    fit an F16, so it must be formed in F32. Weights up to ~1e5 give such blocks; both paths, every
    width and the scalar twin must agree bit for bit and stay within the reference's tolerance."""
    m, n, k = 3, 9, 96
    x = rand_list(m * k, 61)
    wt = Tensor.from_list([v * 1.0e5 for v in rand_list(n * k, 62)], (n, k), "Q4_0")
    data = bytes(ffi.buffer(wt.ptr.data, wt.nbytes))
    assert max(abs(struct.unpack("<e", data[o:o + 2])[0]) for o in range(0, len(data), 18)) > 8192
    xt = Tensor.from_list(x, (m, k))
    for threads in (1, 2):
        B.set_threads(threads)
        sub, norm = both_paths(lambda: F.matmul(xt, wt).to_list())
        assert sub == norm and all(math.isfinite(v) for v in norm)
    check_q4_against_reference(norm, [x[r * k:(r + 1) * k] for r in range(m)], wt, decode_weights(wt))
    B.set_simd(False)
    try:
        assert F.matmul(xt, wt).to_list() == norm
    finally:
        B.set_simd(True)


def test_matmul_n_paths_bit_identical():
    """ce_matmul_n shares one permuted x between weights of a dtype: both paths, mixed dtypes."""
    k = 576
    ws = [make(1, n, k, dt, 70 + n)[2] for n, dt in [(64, "Q4_1"), (31, "Q4_0"), (33, "Q8_0"), (17, "Q4_1")]]
    for m in (1, 3):
        xt = Tensor.from_list(x_with_zeros_and_range(m, k, 90 + m), (m, k))
        sub, norm = both_paths(lambda: [o.to_list() for o in F.matmul_n(xt, ws)])
        assert sub == norm
        for w, got in zip(ws, norm):
            assert F.matmul(xt, w).to_list() == got


def test_set_q4_path_rejects_bad_values():
    with pytest.raises(errors.InvalidArgumentError, match="normal, subnormal"):
        B.set_q4_path("fast")
    with pytest.raises(errors.ArgumentTypeError):
        B.set_q4_path(1)
    B.set_q4_path("normal")
    assert B.q4_probe()["setting"] == "normal" and B.get_q4_path() == "normal"
    assert "q4=normal (forced" in B.build_info()
    B.set_q4_path("subnormal")
    assert "q4=subnormal (forced" in B.build_info()


def test_probe_timings_and_auto_choice_in_build_info():
    B.set_q4_path("auto")
    p = B.q4_probe()
    assert p["setting"] == "auto"
    assert 0 < p["subnormal_ns"] < 1e4 and 0 < p["normal_ns"] < 1e4
    # the rule: subnormal operands only when they cost less than 1.5x normal ones
    assert p["path"] == ("normal" if p["subnormal_ns"] > 1.5 * p["normal_ns"] else "subnormal")
    info = B.build_info()
    assert f"q4={p['path']} (auto; probe: FMA with subnormal operand" in info
    assert f"{p['normal_ns']:.2f} ns" in info


def _run(code, value):
    env = dict(os.environ, TOOLKIT_Q4_PATH=value, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


def test_environment_variable_sets_the_start_path():
    code = "from toolkit.core.engine import backend as B; print(B.q4_probe()['setting'], B.get_q4_path())"
    for value in ("normal", "subnormal"):
        r = _run(code, value)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == [value, value]
    r = _run(code, "fastest")
    assert r.returncode != 0 and "TOOLKIT_Q4_PATH must be one of auto, normal, subnormal" in r.stderr


def extreme_x(m, k, seed):
    """rows spanning the whole F32 range: a largest |x| near FLT_MAX / 2^30 (build_xq's exponent
    clamps there, so the normal path's first-product addends -2^23 xq reach ~2^117), huge and tiny
    magnitudes mixed in every block, and the smallest subnormals"""
    big = struct.unpack("<f", struct.pack("<f", 3.4028234663852886e38 / 2 ** 30))[0]
    x = rand_list(m * k, seed)
    for i in range(len(x)):
        if i % 5 == 1:
            x[i] = math.ldexp(x[i], 90)
        elif i % 5 == 3:
            x[i] = math.ldexp(x[i], -140)
    for r in range(m):
        x[r * k + 7] = big if r % 2 else -big
        x[r * k + 11], x[r * k + 12] = 2.0 ** -149, -2.0 ** -149
    return x


@pytest.mark.parametrize("dtype", ["Q4_0", "Q4_1"])
def test_paths_bit_identical_at_extreme_activation_scales(dtype):
    """The normal path's first products are fma(2^23 + q, xq, -2^23 xq) (simd_load.h, q4_ints):
    exact only while -2^23 xq is finite and exact. With |x| from 2^-149 to FLT_MAX / 2^30 in one
    row, both paths, both widths and the scalar twin still agree bit for bit, finite, within the
    float64 reference's tolerance."""
    for i, (m, n, k) in enumerate([(1, 37, 576), (3, 33, 160), (2, 9, 1536)]):
        _, _, wt = make(m, n, k, dtype, 500 + i)
        x = extreme_x(m, k, 600 + i)
        xt = Tensor.from_list(x, (m, k))
        sub, norm = both_paths(lambda: F.matmul(xt, wt).to_list())
        assert sub == norm and all(math.isfinite(v) for v in norm), (dtype, m, n, k)
        assert max(abs(v) for v in norm) > 1e28  # the huge activations did reach the outputs
        check_q4_against_reference(norm, [x[r * k:(r + 1) * k] for r in range(m)], wt, decode_weights(wt))
        B.set_simd(False)
        try:
            assert F.matmul(xt, wt).to_list() == norm, (dtype, m, n, k)
        finally:
            B.set_simd(True)
