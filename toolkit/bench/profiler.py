"""`python -m toolkit.bench profiler`: what the profiler costs, in decode tokens/s of the default model.

Two comparisons, each as interleaved runs with medians (this machine's speed drifts):
  - compiled in but off vs compiled out: this engine against a copy of it built with
    TOOLKIT_NO_PROFILE=1 (-DCE_NO_PROFILE), in alternating worker processes (one module name,
    so one build per process); target: <= 1 % apart;
  - on vs off: in one process, decode under `m.profile()` (counters, event log, per-module regions)
    and without; target: <= 5 % slower.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _decode_tok_s(m, ids, n):
    """Greedy decode of n tokens after ids; tokens/s of the decode passes (profiler's clock)."""
    from toolkit.core.engine import functional as F
    from toolkit.core.engine import profile

    lm = m.model
    cache = lm.new_cache(len(ids) + n + 1)
    logits = lm.forward_batch([(ids, cache)], logits="last")
    tok = F.sample(logits.reshape(-1), 0.0)
    with profile.step("decode", n) as st:
        for _ in range(n):
            logits = lm.forward_batch([([tok], cache)], logits="last")
            tok = F.sample(logits.reshape(-1), 0.0)
    return n / st.seconds


def _load(threads):
    import toolkit

    m = toolkit.load(threads=threads)
    ids = m.tokenizer.encode("The history of the printing press begins with movable type in East Asia")
    _decode_tok_s(m, ids, 8)  # warm up: weights paged in, pool started
    return m, ids


def _worker(args):
    """Serves timed blocks in this process's engine: for each line on stdin, decodes and prints
    the tokens/s (so two builds can be timed in turns, each staying loaded and warm)."""
    from toolkit.core.engine import profile

    m, ids = _load(args.threads)
    print(f"ready {int(profile.compiled())}", flush=True)
    for _ in sys.stdin:
        print(f"{_decode_tok_s(m, ids, args.tokens):.4f}", flush=True)
    return 0


def _build_without_profiler(dest):
    for part in ("cengine", "toolkit"):
        shutil.copytree(os.path.join(ROOT, part), os.path.join(dest, part),
                        ignore=shutil.ignore_patterns("*.so", "*.o", "__pycache__", "_cengine.c"))
    env = dict(os.environ, TOOLKIT_NO_PROFILE="1")
    r = subprocess.run([sys.executable, os.path.join(dest, "cengine", "build_cengine.py")], env=env,
                       capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"building the engine without the profiler failed:\n{r.stderr[-2000:]}")


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

    def run(self):
        self.proc.stdin.write("go\n")
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

    cpu = _cpu_name()
    print(f"profiler overhead | {cpu} | {platform.python_version()} | engine: {backend.build_info()}")
    m, ids = _load(args.threads)
    print(f"decode {args.tokens} tokens per run, {backend.get_threads()} threads, {args.rounds} interleaved rounds")
    on, off = [], []
    for _ in range(args.rounds):
        off.append(_decode_tok_s(m, ids, args.tokens))
        with m.profile():
            on.append(_decode_tok_s(m, ids, args.tokens))
    m.close()
    print(f"in one process: off {statistics.median(off):.1f} tok/s, on {statistics.median(on):.1f} tok/s; "
          f"on is {_slower(on, off):+.1f}% slower (median of paired runs; target <= 5%)")
    if args.skip_build:
        return 0
    with tempfile.TemporaryDirectory(prefix="cengine-noprof-") as other:
        print("building a copy with TOOLKIT_NO_PROFILE=1 ...", flush=True)
        _build_without_profiler(other)
        a, b = _Worker(ROOT, args), _Worker(other, args)
        if not a.compiled or b.compiled:
            raise SystemExit("the two builds are not with and without the profiler")
        ins, outs = [], []
        try:
            for _ in range(args.rounds):
                ins.append(a.run())
                outs.append(b.run())
        finally:
            a.close()
            b.close()
    print(f"two processes, taking turns: compiled in (off) {statistics.median(ins):.1f} tok/s, compiled out "
          f"{statistics.median(outs):.1f} tok/s; compiled in is {_slower(ins, outs):+.1f}% slower "
          f"(median of paired runs; target within 1%)")
    return 0


def _slower(a, b):
    """Median over paired runs of how much slower a is than b, in percent."""
    return 100 * statistics.median(1 - x / y for x, y in zip(a, b))


def _cpu_name():
    import platform

    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        out = ""
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    raise SystemExit(main())
