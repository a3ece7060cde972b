"""`python -m toolkit.bench profiler`: what the profiler costs, in decode tokens/s of the default model.

Two comparisons, each as interleaved runs with medians (this machine's speed drifts):
  - compiled in but off vs compiled out: this engine against a copy of it built with
    TOOLKIT_NO_PROFILE=1 (-DCE_NO_PROFILE), in two worker processes taking turns (one module
    name, so one build per process); target: <= 1 % apart;
  - on vs off: in one process, decode under `m.profile()` (counters, event log, per-module regions)
    and without; target: <= 5 % slower.
End-to-end tokens/s scatter by more than these targets on a shared machine, so each comparison is
also made from the calling thread's CPU time per engine call and per module call (small,
cache-resident, thousands of calls: stable to a few ns), multiplied by the calls one decode step
makes, as a share of the step's time.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile

from toolkit.common.machine import cpu_name

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _decode_tok_s(m, ids, n):
    """Greedy decode of n tokens after ids; tokens/s of the decode passes (profiler's clock)."""
    from toolkit.bench.generate import greedy_run

    return greedy_run(m, ids, n)[1]


def _load(threads):
    import toolkit

    m = toolkit.load(threads=threads)
    ids = m.tokenizer.encode("The history of the printing press begins with movable type in East Asia")
    _decode_tok_s(m, ids, 8)  # warm up: weights paged in, pool started
    return m, ids


def _call_costs(n=20000):
    """(ns per engine call, ns per module call) of the calling thread's CPU time: a 576-float add,
    and a Module with a hook path whose forward does nothing."""
    import time

    from toolkit.core.engine import functional as F
    from toolkit.core.engine.modules import Module
    from toolkit.core.engine.tensor import Tensor

    class _Nop(Module):
        def forward(self, x):
            return x

    a, mod = Tensor((576,)), _Nop()
    mod.hook_path = "blocks.0.attn"
    t0 = time.thread_time_ns()
    for _ in range(n):
        F.add(a, a, out=a)
    t1 = time.thread_time_ns()
    for _ in range(n):
        mod(a)
    t2 = time.thread_time_ns()
    return (t1 - t0) / n, (t2 - t1) / n


def _step_calls(m, ids):
    """(engine calls, module calls) of one decode step and its sampling."""
    from toolkit.core.engine import functional as F

    lm = m.model
    cache = lm.new_cache(len(ids) + 2)
    logits = lm.forward_batch([(ids, cache)], logits="last")
    with m.profile() as prof:
        logits = lm.forward_batch([([F.sample(logits.reshape(-1), 0.0)], cache)], logits="last")
        F.sample(logits.reshape(-1), 0.0)
    layers = prof.by_layer()
    return (sum(r["calls"] for r in prof.by_op().values()),
            sum(r["calls"] for n, r in layers.items() if n != "(outside modules)"))


def _worker(args):
    """Serves timed blocks in this process's engine: for each line on stdin, decodes and prints
    the tokens/s (so two builds can be timed in turns, each staying loaded and warm)."""
    from toolkit.core.engine import profile

    m, ids = _load(args.threads)
    print(f"ready {int(profile.compiled())}", flush=True)
    for line in sys.stdin:
        if line.strip() == "calls":
            print(f"{_call_costs()[0]:.2f}", flush=True)
        else:
            print(f"{_decode_tok_s(m, ids, args.tokens):.4f}", flush=True)
    return 0


class _Worker:
    def __init__(self, tree, args):
        cmd = [sys.executable, "-m", "toolkit.bench", "profiler", "--worker", "--tokens", str(args.tokens)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        self.proc = subprocess.Popen(cmd, env=dict(os.environ, PYTHONPATH=tree), cwd=tree, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        line = self.proc.stdout.readline().split()
        if not line or line[0] != "ready":
            raise SystemExit(f"the worker in {tree} did not start")
        self.compiled = line[1] == "1"

    def run(self, what="go"):
        self.proc.stdin.write(what + "\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m toolkit.bench profiler", description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=64, help="decode tokens per timed run")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--skip-build", action="store_true", help="only the on/off comparison (no second build)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return _worker(args)

    import platform

    from toolkit.core.engine import backend

    cpu = cpu_name()
    print(f"profiler overhead | {cpu} | {platform.python_version()} | engine: {backend.build_info()}")
    m, ids = _load(args.threads)
    print(f"decode {args.tokens} tokens per run, {backend.get_threads()} threads, {args.rounds} interleaved rounds")
    step_ops, step_mods = _step_calls(m, ids)
    on, off, c_on, c_off = [], [], [], []
    for _ in range(args.rounds):
        off.append(_decode_tok_s(m, ids, args.tokens))
        c_off.append(_call_costs())
        with m.profile():
            on.append(_decode_tok_s(m, ids, args.tokens))
            c_on.append(_call_costs())
    m.close()
    step_s = 1 / statistics.median(off)
    op_off, op_on = statistics.median(c[0] for c in c_off), statistics.median(c[0] for c in c_on)
    mod_off, mod_on = statistics.median(c[1] for c in c_off), statistics.median(c[1] for c in c_on)
    est = ((op_on - op_off) * step_ops + (mod_on - mod_off) * step_mods) * 1e-9 / step_s
    print(f"a decode step: {step_ops:.0f} engine calls, {step_mods:.0f} module calls, {step_s * 1e3:.1f} ms")
    print(f"on vs off, in one process: {statistics.median(on):.1f} vs {statistics.median(off):.1f} tok/s, "
          f"on is {_slower(on, off):+.1f}% slower (median of paired runs); per call (thread CPU): engine "
          f"{op_off:.0f} -> {op_on:.0f} ns, module {mod_off:.0f} -> {mod_on:.0f} ns: {100 * est:+.2f}% of a "
          f"decode step (target <= 5%)")
    if args.skip_build:
        return 0
    with tempfile.TemporaryDirectory(prefix="cengine-noprof-") as other:
        print("building a copy with TOOLKIT_NO_PROFILE=1 ...", flush=True)
        from toolkit import errors
        from toolkit.core.engine.profile import build_copy_without_profiler

        try:
            build_copy_without_profiler(other)
        except errors.ToolkitError as e:
            raise SystemExit(str(e)) from None
        a, b = _Worker(ROOT, args), _Worker(other, args)
        if not a.compiled or b.compiled:
            raise SystemExit("the two builds are not with and without the profiler")
        ins, outs, c_in, c_out = [], [], [], []
        try:
            for _ in range(args.rounds):
                ins.append(a.run())
                outs.append(b.run())
                c_in.append(a.run("calls"))
                c_out.append(b.run("calls"))
        finally:
            a.close()
            b.close()
    op_in, op_out = statistics.median(c_in), statistics.median(c_out)
    est = (op_in - op_out) * step_ops * 1e-9 / step_s
    print(f"compiled in (off) vs compiled out, two processes taking turns: {statistics.median(ins):.1f} vs "
          f"{statistics.median(outs):.1f} tok/s, compiled in is {_slower(ins, outs):+.1f}% slower (median of "
          f"paired runs); per engine call (thread CPU) {op_in:.1f} vs {op_out:.1f} ns: {100 * est:+.3f}% of a "
          f"decode step (target within 1%)")
    return 0


def _slower(a, b):
    """Median over paired runs of how much slower a is than b, in percent."""
    return 100 * statistics.median(1 - x / y for x, y in zip(a, b))


if __name__ == "__main__":
    raise SystemExit(main())
