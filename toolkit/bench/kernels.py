"""`python -m toolkit.bench kernels`: matmul kernels against this machine's memory bandwidth.

Measured in one run, for every weight dtype (F32, F16, BF16, Q8_0, Q4_0, Q4_1) and for 1 and N
threads:
  - read bandwidth: the engine streaming a 512 MiB buffer (ce_bench_read_bandwidth): the ceiling;
  - decode GEMV: the default model's layer matrices, called as its decode step calls them (per
    layer: q 576x576, k and v 192x576 in one matmul_n call; o 576x576; gate and up 1536x576 in one
    matmul_n call; down 576x1536), 30 layers (more if needed to be 2x the L3), cycled so every
    matrix comes from DRAM, as effective GB/s of weights read and as a share of the measured
    bandwidth. Decode steps follow one another, so each round runs the set DECODE_PASSES times
    back to back: the first pass (right after the other measurements: threads and caches cold) is
    shown on its own, the steady state is the median of the passes after it;
  - lm-head GEMV: one 49152x576 matrix alone;
  - prefill: x[512, 576] @ w[1536, 576]^T (a prefill chunk), in GFLOP/s, as the models run it
    (batch invariant: the GEMV's arithmetic for every row) and with the packed GEMM
    (set_batch_invariant(False), whose rows depend on the batch).
Q4_0 and Q4_1 are measured with each Q4 unpacking path (--q4-paths, default both: subnormal lanes,
fast on AMD Zen, and normal floats, fast everywhere; they give the same bits), interleaved, and
every dtype with each vector width (--vector-bits, default both where the 512-bit kernels can
run: they give the same bits; a second table shows the 512-bit figures over the 256-bit ones,
medians of per-round ratios).
A dtype whose decode set reads under WARN_SHARE of the bandwidth is flagged with a warning line:
that is how a kernel that collapses on some CPU (Q4 with subnormal operands on Intel) shows up.
Memory bandwidth drifts on this machine, so every measurement is repeated in interleaved rounds
(all dtypes and thread counts once per round, bandwidth too) and medians are reported.

Weights are random F32 quantized by the engine itself (ce_convert), one layer per shape, then copied
to the other layers: contents do not change the speed of these kernels.
"""
import argparse
import random
import statistics
import time
from array import array

from toolkit.core.engine import backend as B
from toolkit.core.engine import functional as F
from toolkit.core.engine.backend import Tensor
# ce_bench_read_bandwidth and raw byte copies have no backend wrapper: this tool measures the
# engine itself, so it may reach the binding directly.

DTYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1"]
D_MODEL, D_KV, D_FF, N_LAYERS, VOCAB = 576, 192, 1536, 30, 49152
# one layer of the decode step: (rows, columns) of each matrix, grouped as the model calls them
LAYER_CALLS = [[(D_MODEL, D_MODEL), (D_KV, D_MODEL), (D_KV, D_MODEL)],  # q, k, v: one matmul_n
               [(D_MODEL, D_MODEL)],                                   # o
               [(D_FF, D_MODEL), (D_FF, D_MODEL)],                     # gate, up: one matmul_n
               [(D_MODEL, D_FF)]]                                      # down
GEMM_M = 512
BW_BYTES = 512 << 20
MIN_SET_BYTES = 64 << 20  # a decode set at least 2x the 32 MiB L3
DECODE_PASSES = 3
Q4_PATHS = ["subnormal", "normal"]
WARN_SHARE = 0.40  # a decode set under this share of the read bandwidth is flagged


def _f32_tensor(n, seed):
    """An F32 tensor of n values: a random run of a prime length, tiled by doubling copies."""
    r = random.Random(seed)
    pool = array("f", [r.uniform(-1.0, 1.0) for _ in range(min(n, 65521))])
    t = Tensor((n,), "F32")
    dst = t.memoryview()
    dst[:len(pool)] = pool
    done = len(pool)
    while done < n:
        step = min(done, n - done)
        dst[done:done + step] = dst[:step]
        done += step
    return t


def _weights(dtype, n, k, src, copies):
    """`copies` [n, k] tensors of dtype: the first quantized from src by the engine, the rest copied."""
    first = src.reshape(n, k).to(dtype) if dtype != "F32" else src.reshape(n, k).clone()
    out = [first]
    for _ in range(copies - 1):
        out.append(first.clone())
    return out


class _Case:
    """The weights of one dtype: a decode set of layers, an lm head and a GEMM matrix."""

    def __init__(self, dtype, srcs, layers=None):
        per32 = Tensor((1, 32), dtype).nbytes  # bytes per 32 weights
        per_layer = sum(per32 * n * k // 32 for call in LAYER_CALLS for n, k in call)
        self.layers = layers or max(N_LAYERS, -(-MIN_SET_BYTES // per_layer))
        # self.decode[layer][call]: the weights of one engine call
        self.decode = [[[] for _ in LAYER_CALLS] for _ in range(self.layers)]
        for c, call in enumerate(LAYER_CALLS):
            for j, (n, k) in enumerate(call):
                for layer, w in zip(self.decode, _weights(dtype, n, k, srcs[n, k], self.layers)):
                    layer[c].append(w)
        self.decode_bytes = sum(w.nbytes for layer in self.decode for call in layer for w in call)
        self.head = _weights(dtype, VOCAB, D_MODEL, srcs["head"], 1)[0]
        self.gemm_w = self.decode[0][2][0]  # gate


def _time(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m toolkit.bench kernels", description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=B.default_threads(),
                   help="the largest thread count to measure (the table shows 1 and this)")
    p.add_argument("--quick", action="store_true", help="3 rounds instead of 7")
    p.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated subset of " + ",".join(DTYPES))
    p.add_argument("--q4-paths", default="both",
                   help="Q4 unpacking paths to measure: both (default), auto, normal or subnormal")
    p.add_argument("--vector-bits", default="both",
                   help="kernel widths to measure: both (default, where 512 is available), auto, 256 or 512")
    p.add_argument("--layers", type=int, default=None,
                   help="decode-set layers (default: 30, more when needed to be 2x the L3); a small set "
                        "stays in cache and measures nothing but that the tool runs")
    args = p.parse_args(argv)
    dtypes = [d.strip().upper() for d in args.dtypes.split(",") if d.strip()]
    bad = [d for d in dtypes if d not in DTYPES]
    if bad:
        p.error(f"unknown dtype(s) {', '.join(bad)}: choose from {', '.join(DTYPES)}")
    if args.layers is not None and args.layers < 1:
        p.error("--layers must be at least 1")
    q4_paths = {"both": Q4_PATHS, "auto": [None]}.get(args.q4_paths, [args.q4_paths])
    if q4_paths != [None] and not set(q4_paths) <= set(Q4_PATHS):
        p.error(f"--q4-paths must be both, auto, normal or subnormal, got {args.q4_paths!r}")
    vp = B.vector_probe()
    widths = {"both": [256, 512] if vp["available"] else [256], "auto": [None], "256": [256], "512": [512]}.get(
        args.vector_bits)
    if widths is None:
        p.error(f"--vector-bits must be both, auto, 256 or 512, got {args.vector_bits!r}")
    if widths == [512] and not vp["available"]:
        p.error(f"--vector-bits 512: the 512-bit kernels are not available ({vp['reason']})")
    # what each row measures: (dtype, Q4 path or None, vector width or None: the engine's own choice)
    variants = [(dt, q, w) for dt in dtypes for q in (q4_paths if dt.startswith("Q4") else [None]) for w in widths]
    rounds = 3 if args.quick else 7
    threads = sorted({1, max(1, args.threads)})
    t_start = time.perf_counter()

    srcs = {(n, k): _f32_tensor(n * k, n + k) for call in LAYER_CALLS for n, k in call}
    srcs["head"] = _f32_tensor(VOCAB * D_MODEL, 3)
    cases = {dt: _Case(dt, srcs, args.layers) for dt in dtypes}
    del srcs
    x_model = Tensor.from_list([random.Random(4).uniform(-1, 1) for _ in range(D_MODEL)], (1, D_MODEL))
    x_ff = Tensor.from_list([random.Random(5).uniform(-1, 1) for _ in range(D_FF)], (1, D_FF))
    o_head = Tensor((1, VOCAB))
    # per call: its input and one output per weight
    call_io = [(x_model if call[0][1] == D_MODEL else x_ff, [Tensor((1, n)) for n, _ in call]) for call in LAYER_CALLS]
    x_gemm = Tensor.from_list([random.Random(6).uniform(-1, 1) for _ in range(D_MODEL)] * GEMM_M, (GEMM_M, D_MODEL))
    o_gemm = Tensor((GEMM_M, D_FF))
    setup_s = time.perf_counter() - t_start

    def decode_pass(case):
        for layer in case.decode:
            for ws, (x, outs) in zip(layer, call_io):
                if len(ws) == 1:
                    F.matmul(x, ws[0], out=outs[0])
                else:
                    F.matmul_n(x, ws, outs=outs)

    bw = {th: [] for th in threads}
    res = {(v, th): {"first": [], "decode": [], "head": [], "gemm": [], "packed": []} for v in variants for th in threads}
    q4_setting, bits_setting = B.q4_probe()["setting"], vp["setting"]
    for rnd in range(rounds + 1):  # round 0 warms up (page faults, pool start) and is dropped
        for th in threads:
            B.set_threads(th)
            s = B.bench_read_bandwidth(BW_BYTES, 2)
            if rnd:
                bw[th].append(BW_BYTES / s / 1e9)
            for v in variants:
                dt, q4, bits = v
                B.set_q4_path(q4 or q4_setting)
                B.set_vector_bits(bits or bits_setting)
                c, r = cases[dt], res[v, th]
                t_dec = [_time(lambda: decode_pass(c)) for _ in range(DECODE_PASSES)]
                t_head = _time(lambda: F.matmul(x_model, c.head, out=o_head))
                t_gemm = _time(lambda: F.matmul(x_gemm, c.gemm_w, out=o_gemm))
                B.set_batch_invariant(False)
                try:
                    t_packed = _time(lambda: F.matmul(x_gemm, c.gemm_w, out=o_gemm))
                finally:
                    B.set_batch_invariant(True)
                if rnd:
                    r["first"].append(c.decode_bytes / t_dec[0] / 1e9)
                    r["decode"].extend(c.decode_bytes / t / 1e9 for t in t_dec[1:])
                    r["head"].append(c.head.nbytes / t_head / 1e9)
                    r["gemm"].append(2.0 * GEMM_M * D_FF * D_MODEL / t_gemm / 1e9)
                    r["packed"].append(2.0 * GEMM_M * D_FF * D_MODEL / t_packed / 1e9)

    B.set_q4_path(q4_setting)
    B.set_vector_bits(bits_setting)
    med = statistics.median
    print(f"cengine kernels | {B.build_info()} | {rounds} interleaved rounds, medians "
          f"(setup {setup_s:.1f} s, total {time.perf_counter() - t_start:.1f} s)")
    print("read bandwidth (512 MiB): " + ", ".join(
        f"{th} thread{'s' if th > 1 else ''} {med(bw[th]):.1f} GB/s (min {min(bw[th]):.1f}, max {max(bw[th]):.1f})"
        for th in threads))
    print(f"decode set: {N_LAYERS}+ layers x (q, k, v; o; gate, up; down) in 4 calls, cycled from DRAM, {DECODE_PASSES} "
          f"passes back to back: the first, then the steady state (the passes after it); "
          f"lm head: 49152x576; prefill: [{GEMM_M},576] @ [1536,576]^T, batch invariant (as the models run it) "
          f"and packed GEMM (opt-in)")
    head = (f"{'dtype':<16}{'thr':>4} {'set MB':>7} {'1st pass':>9} {'decode GB/s':>12} {'% bw':>6} "
            f"{'lm-head GB/s':>13} {'% bw':>6}"
            f" {'prefill GFLOP/s':>16} {'packed GEMM':>12}")
    print(head)
    print("-" * len(head))
    slow = []
    for v in variants:
        dt, q4, bits = v
        name = "/".join([dt] + ([q4] if q4 else []) + ([str(bits)] if bits else []))
        for th in threads:
            r, b = res[v, th], med(bw[th])
            d, h = med(r["decode"]), med(r["head"])
            if d < WARN_SHARE * b:
                slow.append(f"{name} ({th} thread{'s' if th > 1 else ''}): {d:.1f} GB/s = {100 * d / b:.0f}%")
            print(f"{name:<16}{th:>4} {cases[dt].decode_bytes / 1e6:>7.0f} {med(r['first']):>9.1f} {d:>12.1f} {100 * d / b:>5.0f}% "
                  f"{h:>13.1f} {100 * h / b:>5.0f}% {med(r['gemm']):>16.1f} {med(r['packed']):>12.1f}")
    if len(widths) == 2:
        print("512-bit over 256-bit kernels (same bits), medians of per-round ratios: >1 means 512 is faster")
        head2 = f"{'dtype':<16}{'thr':>4} {'decode':>8} {'lm-head':>8} {'prefill':>8} {'packed GEMM':>12}"
        print(head2)
        print("-" * len(head2))
        for v in variants:
            dt, q4, bits = v
            if bits != 512:
                continue
            name = f"{dt}/{q4}" if q4 else dt
            for th in threads:
                a, b = res[v, th], res[(dt, q4, 256), th]
                # decode: per pass, so a ratio pairs the passes of one round
                ratio = {key: med(x / y for x, y in zip(a[key], b[key])) for key in ("decode", "head", "gemm", "packed")}
                print(f"{name:<16}{th:>4} {ratio['decode']:>8.2f} {ratio['head']:>8.2f} {ratio['gemm']:>8.2f} "
                      f"{ratio['packed']:>12.2f}")
    for line in slow:
        print(f"WARNING: decode set of {line} of the measured read bandwidth, under {100 * WARN_SHARE:.0f}%: "
              "a kernel is far slower on this CPU than it should be, or other programs kept the cores busy "
              "(rerun on a quiet machine; if it stays, please report it with this table)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
