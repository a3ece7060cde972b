"""The engine's per-op counters: every public op counts, with the bytes and FLOPs it should."""
import pytest

from toolkit import errors
from toolkit.core.engine import functional as F
from toolkit.core.engine import profile
from toolkit.core.engine._lib import ffi, lib
from toolkit.core.engine.profile import Profiler
from toolkit.core.engine.tensor import Tensor


def _t(shape, start=0.0, dtype="F32"):
    n = 1
    for s in shape:
        n *= s
    t = Tensor.from_list([((i * 7 + 3) % 11 - 5 + start) * 0.1 for i in range(n)], shape)
    return t if dtype == "F32" else t.to(dtype)


def test_op_table_names_every_public_op():
    names = [ffi.string(lib.ce_op_name(i)).decode() for i in range(lib.CE_OP_COUNT)]
    assert names == profile.OPS
    public = {n[len("ce_"):] for n in dir(lib) if n.startswith("ce_")}
    for op in profile.OPS:
        assert op in public, op
    for extra in ("matmul_n", "copy_rows", "sample", "repetition_penalty", "convert"):
        assert extra in names
    assert ffi.string(lib.ce_op_name(lib.CE_OP_COUNT)).decode() == "unknown"


def _calls(prof):
    return {op: r["calls"] for op, r in prof.by_op().items()}


def test_every_op_counts_one_call():
    x, y = _t((4, 64)), _t((4, 64), 1.0)
    w = _t((8, 64), dtype="Q4_1")
    kv = _t((6, 2, 32))
    q = _t((2, 4, 32))
    logits = _t((64,))
    cache = Tensor((8, 4, 64))
    nw = _t((64,))
    q8 = Tensor((4, 64), "Q8_0")
    ids, pos, hist = (Tensor((len(v),), "I32").load(v) for v in ([1, 2], [4, 5], [1, 2, 2]))
    runs = {
        "matmul": lambda: F.matmul(x, w),
        "matmul_n": lambda: F.matmul_n(x, [w, w]),
        "embedding": lambda: F.embedding(w, ids),
        "rmsnorm": lambda: F.rms_norm(x, nw),
        "rope": lambda: F.rope_(q, pos, 32),
        "softmax": lambda: F.softmax(x),
        "silu": lambda: F.silu(x),
        "gelu": lambda: F.gelu(x),
        "silu_mul": lambda: F.silu_mul(x, y),
        "add": lambda: F.add(x, y),
        "mul": lambda: F.mul(x, y),
        "scale": lambda: F.scale(x, 2.0),
        "attention": lambda: F.scaled_dot_product_attention(q, kv, kv, pos, 6),
        "argmax": lambda: F.argmax(x),
        "topk": lambda: F.topk(x, 3),
        "copy": lambda: F.copy_(Tensor((4, 64)), x),
        "copy_rows": lambda: F.copy_rows_(cache, 2, x.reshape(1, 4, 64)),
        "convert": lambda: lib.ce_convert(lib.CE_Q8_0, q8._ct.data, lib.CE_F32, x._ct.data, 4 * 64),
        "repetition_penalty": lambda: F.repetition_penalty_(logits, hist, 1.3),
        "sample": lambda: F.sample(logits, 0.0),
        "attention_seqs": lambda: F.attention_seqs(q, pos, [2], [Tensor((6, 2, 32))], [Tensor((6, 2, 32))],
                                                   kv[:2], kv[:2]),
    }
    assert set(runs) == set(profile.OPS)
    for op, fn in runs.items():
        with Profiler() as prof:
            fn()
        calls = _calls(prof)
        assert calls.get(op) == 1, (op, calls)
        assert sum(calls.values()) == 1, (op, calls)  # nothing else counted (nested calls belong to the op)


def test_bytes_and_flops_of_a_matmul():
    M, N, K = 3, 40, 96
    x, w, bias = _t((M, K)), _t((N, K), dtype="Q4_1"), _t((N,))
    with Profiler() as prof:
        F.matmul(x, w, bias)
        F.matmul_n(x, [w, w])
    r = prof.by_op()
    wbytes = N * K // 32 * 20                   # Q4_1: 20 bytes per 32 weights
    assert w.nbytes == wbytes
    mm = r["matmul"]
    assert mm["weight_bytes"] == wbytes
    assert mm["bytes_read"] == M * K * 4 + wbytes + N * 4
    assert mm["bytes_written"] == M * N * 4
    assert mm["flops"] == 2 * M * N * K + M * N
    mn = r["matmul_n"]                           # x once, both weights
    assert mn["weight_bytes"] == 2 * wbytes
    assert mn["bytes_read"] == M * K * 4 + 2 * wbytes
    assert mn["flops"] == 2 * 2 * M * N * K


def test_attention_flops_count_both_dot_products_per_visible_key():
    T, H, Hkv, D, S = 3, 4, 2, 32, 10
    q, k = _t((T, H, D)), _t((S, Hkv, D))
    pos = Tensor((3,), "I32").load([5, 6, 7])
    with Profiler() as prof:
        F.scaled_dot_product_attention(q, k, k, pos, 8)
    r = prof.by_op()["attention"]
    keys = sum(p + 1 for p in pos.to_list())
    assert r["flops"] == 4 * H * D * keys
    assert r["bytes_read"] == T * H * D * 4 + 2 * 8 * Hkv * D * 4 + T * 4


def test_attention_seqs_counts_each_sequence_and_the_appended_rows():
    H, Hkv, D = 4, 2, 32
    q, new = _t((3, H, D)), _t((3, Hkv, D))
    caches = [Tensor((10, Hkv, D)), Tensor((10, Hkv, D), "F16")]
    pos = Tensor((3,), "I32").load([5, 2, 3])  # sequence 0: one row at 5; sequence 1: two rows at 2, 3
    with Profiler() as prof:
        F.attention_seqs(q, pos, [1, 2], caches, caches, new, new)
    r = prof.by_op()["attention_seqs"]
    assert r["calls"] == 1 and set(prof.by_op()) == {"attention_seqs"}  # its copies are part of it
    assert r["flops"] == 4 * H * D * (6 + 3 + 4)
    kv_read = 6 * Hkv * D * 8 + 4 * Hkv * D * 4  # every visible key and value once, in the cache's dtype
    assert r["bytes_read"] == 3 * H * D * 4 + kv_read + 3 * 4 + 3 * Hkv * D * 8
    assert r["bytes_written"] == 3 * H * D * 4 + 1 * Hkv * D * 8 + 2 * Hkv * D * 4


def test_failed_calls_are_counted_apart():
    with Profiler() as prof:
        with pytest.raises(errors.ShapeError):
            F.add(_t((2, 8)), _t((3, 5)))
        F.add(_t((2, 8)), _t((2, 8)))
    add = prof.by_op()["add"]
    assert add["calls"] == 1 and add["failed"] == 1
    assert add["bytes_read"] == 2 * 16 * 4 and add["flops"] == 16


def test_off_counts_nothing_and_profiles_do_not_nest():
    lib.ce_profile_reset()
    F.add(_t((2, 8)), _t((2, 8)))
    assert all(c["calls"] == 0 for c in profile.read_counters().values())
    with Profiler() as prof:
        with pytest.raises(errors.InvalidArgumentError):
            Profiler().start()
        with pytest.raises(errors.InvalidArgumentError):
            prof.by_op()
    with pytest.raises(errors.InvalidArgumentError):
        prof.start()                          # one run per profiler
    with pytest.raises(errors.InvalidArgumentError):
        Profiler(log_capacity=-1)


def test_a_full_event_log_counts_what_it_drops():
    a = _t((2, 8))
    with Profiler(log_capacity=3) as prof:
        for _ in range(5):
            F.add(a, a)
    assert prof.by_op()["add"]["calls"] == 5      # the counters see every call
    assert prof.dropped_events == 2
    assert len(prof._events) == 3


def test_engine_clock_is_pythons_monotonic_clock():
    a = profile.now_ns()
    b = lib.ce_profile_now_ns()
    c = profile.now_ns()
    assert a <= b <= c


def test_the_engine_still_compiles_without_the_profiler():
    """TOOLKIT_NO_PROFILE=1 builds with -DCE_NO_PROFILE (the benchmark's baseline): keep it compiling."""
    import glob
    import os
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    srcs = sorted(glob.glob(os.path.join(root, "cengine", "src", "*.c")))
    r = subprocess.run([os.environ.get("CC", "cc"), "-fsyntax-only", "-std=c11", "-D_GNU_SOURCE",
                        "-Werror=implicit-function-declaration", "-march=native", "-DCE_NO_PROFILE",
                        "-I" + os.path.join(root, "cengine", "include"), "-I" + os.path.join(root, "cengine", "src")]
                       + srcs, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
