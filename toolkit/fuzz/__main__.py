"""python -m toolkit.fuzz --cases N --seed S --out DIR: mutation-fuzz both weight loaders.

Every case must either load and run a forward pass (plus two generated tokens) or raise a
ToolkitError subclass. Anything else is a failure: an untyped exception, a signal (the worker
process died), or a hang (no answer within --timeout). Cases run in worker processes, each under
an address-space cap (RLIMIT_AS, --mem-gib), --batch cases per process so start-up does not
dominate; a crash or hang costs one worker, which is restarted after the offending case. Failing
inputs are copied to --out with a .txt note (kind, mutations, error) for a regression test.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings

FAILURES = ("untyped", "signal", "hang")


def run_case(path: str) -> None:
    """Load, one forward pass, two generated tokens, close. Raises whatever the toolkit raises."""
    import toolkit

    m = toolkit.load(path, threads=1)
    try:
        v = m.config.vocab_size
        m.logits([i % v for i in (1, 2, 3)])
        m.generate("ab", max_new_tokens=2, stop_at_eos=False)
    finally:
        m.close()


def worker(seed: int, start: int, stop: int, workdir: str, kind: str | None, gguf: str | None = None) -> int:
    from toolkit.errors import ToolkitError
    from toolkit.fuzz.mutate import Base, make_case

    warnings.simplefilter("ignore")
    base = Base(gguf)
    out = sys.stdout
    for i in range(start, stop):
        k, path, ops = make_case(seed, i, base, workdir, kind)
        out.write(json.dumps({"start": i, "kind": k, "path": path, "ops": ops}) + "\n")
        out.flush()
        status, detail = "ok", ""
        try:
            run_case(path)
        except ToolkitError as e:
            status, detail = "typed", f"{type(e).__name__}: {str(e)[:300]}"
        except BaseException as e:  # the point of the fuzzer: report it, keep going
            status, detail = "untyped", "".join(traceback.format_exception(e))[-4000:]
        out.write(json.dumps({"end": i, "status": status, "detail": detail}) + "\n")
        out.flush()
        if status != "untyped":
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.exists(path):
                os.remove(path)
    return 0


def _limit(mem_bytes: int):
    def apply():
        if mem_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return apply


class Runner:
    def __init__(self, args):
        self.args = args
        self.results = {}  # index -> (status, kind, ops, detail)
        self.lock = threading.Lock()
        self.out = args.out
        os.makedirs(self.out, exist_ok=True)
        self.workdir = tempfile.mkdtemp(prefix="toolkit-fuzz-")
        self._err_path = {}  # thread -> stderr file of its current worker

    def _spawn(self, start, stop):
        cmd = [sys.executable, "-m", "toolkit.fuzz", "--worker", "--seed", str(self.args.seed),
               "--start", str(start), "--stop", str(stop), "--work", self.workdir]
        if self.args.kind:
            cmd += ["--kind", self.args.kind]
        if self.args.gguf:
            cmd += ["--gguf", self.args.gguf]
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false", RAYON_NUM_THREADS="1",
                   OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="")
        self._err_path[threading.get_ident()] = path = os.path.join(self.workdir, f"worker-{start}.err")
        with open(path, "wb") as err:
            return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env,
                                    preexec_fn=_limit(self.args.mem_gib << 30))

    def _stderr(self, start=None):
        path = self._err_path.get(threading.get_ident())
        if path is None:
            return ""
        try:
            with open(path, "rb") as f:
                return f.read()[-3000:].decode("utf-8", "replace")
        except OSError:
            return ""

    def _record(self, i, status, info, detail):
        with self.lock:
            self.results[i] = (status, info.get("kind", "?"), info.get("ops", []), detail)
        if status == "harness":
            print(f"case {i}: the fuzzer itself failed\n{detail[-1500:]}", file=sys.stderr, flush=True)
        if status in FAILURES:
            path = info.get("path")
            name = f"{status}-{self.args.seed}-{i}-{info.get('kind', '?')}"
            dst = os.path.join(self.out, name)
            if path and os.path.isdir(path):
                shutil.copytree(path, dst, dirs_exist_ok=True)
            elif path and os.path.exists(path):
                shutil.copyfile(path, dst + os.path.splitext(path)[1])
            with open(dst + ".txt", "w") as f:
                f.write(f"seed {self.args.seed} case {i} kind {info.get('kind')}\nops {info.get('ops')}\n\n{detail}\n")
            if not self.args.quiet:
                print(f"case {i}: {status} ({info.get('kind')}, {info.get('ops')})\n{detail[-600:]}", flush=True)

    def run_chunk(self, start, stop):
        """Runs cases [start, stop), restarting the worker after a crash or a hang."""
        while start < stop:
            p = self._spawn(start, stop)
            fd = p.stdout.fileno()
            buf, current, deadline = b"", None, time.monotonic() + self.args.timeout + 30  # + start-up
            while True:
                left = deadline - time.monotonic()
                ready = select.select([fd], [], [], max(0.0, left))[0] if left > 0 else []
                if not ready:  # hang: kill it, blame the case in progress
                    p.kill()
                    p.wait()
                    if current is None:
                        raise RuntimeError(f"fuzz worker for cases {start}..{stop} did not start:\n"
                                           f"{self._stderr(start)}")
                    self._record(current["start"], "hang", current, f"no answer in {self.args.timeout} s")
                    start = current["start"] + 1
                    break
                chunk = os.read(fd, 65536)
                if not chunk:  # the worker exited
                    rc = p.wait()
                    if current is not None:
                        self._record(current["start"], "signal", current,
                                     f"worker died with {'signal ' + str(-rc) if rc < 0 else 'exit ' + str(rc)}\n"
                                     f"{self._stderr(start)}")
                        start = current["start"] + 1
                    elif rc != 0:  # died between cases: a bug of the fuzzer itself (making case `start`)
                        self._record(start, "harness", {"kind": "?"}, f"worker exit {rc}\n{self._stderr()}")
                        start += 1
                    else:
                        start = stop
                    break
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    msg = json.loads(line)
                    if "start" in msg:
                        current = msg
                        deadline = time.monotonic() + self.args.timeout
                    else:
                        self._record(msg["end"], msg["status"], current, msg["detail"])
                        current = None
                        start = msg["end"] + 1

    def run(self):
        a = self.args
        chunks = [(s, min(s + a.batch, a.start + a.cases)) for s in range(a.start, a.start + a.cases, a.batch)]
        todo = list(reversed(chunks))

        def loop():
            while True:
                with self.lock:
                    if not todo:
                        return
                    s, e = todo.pop()
                self.run_chunk(s, e)

        t0 = time.monotonic()
        threads = [threading.Thread(target=loop) for _ in range(max(1, a.jobs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        shutil.rmtree(self.workdir, ignore_errors=True)
        return self.summary(time.monotonic() - t0)

    def summary(self, seconds):
        counts, by_kind, errors = {}, {}, {}
        for status, kind, _, detail in self.results.values():
            counts[status] = counts.get(status, 0) + 1
            by_kind.setdefault(kind, {}).setdefault(status, 0)
            by_kind[kind][status] += 1
            if status == "typed":
                name = detail.split(":", 1)[0]
                errors[name] = errors.get(name, 0) + 1
        s = {"seed": self.args.seed, "cases": len(self.results), "seconds": round(seconds, 1),
             "counts": counts, "by_kind": by_kind, "typed_errors": errors,
             "failures": sorted(i for i, r in self.results.items() if r[0] in FAILURES),
             "harness_errors": sorted(i for i, r in self.results.items() if r[0] == "harness")}
        with open(os.path.join(self.out, "summary.json"), "w") as f:
            json.dump(s, f, indent=1)
        return s


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m toolkit.fuzz", description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--start", type=int, default=0, help="first case index (to resume or replay one)")
    ap.add_argument("--out", default="fuzz-out", help="folder for failing inputs and summary.json")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--batch", type=int, default=50, help="cases per worker process")
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds per case before it is a hang")
    # ASan reserves terabytes of address space for its shadow memory: no cap under a sanitizer.
    asan = "libasan" in os.environ.get("LD_PRELOAD", "")
    ap.add_argument("--mem-gib", type=int, default=0 if asan else 4,
                    help="address-space cap per worker in GiB (0: none; the default under ASan)")
    ap.add_argument("--kind", default=None, help="only this mutation kind (see toolkit.fuzz.mutate.KINDS)")
    ap.add_argument("--gguf", default=None,
                    help="mutate this GGUF file (e.g. the default model) instead of the tiny model: "
                         "header byte mutations and truncations, ~1 s per case")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--stop", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args.seed, args.start, args.stop, args.work, args.kind, args.gguf)
    s = Runner(args).run()
    print(json.dumps({k: s[k] for k in ("seed", "cases", "seconds", "counts", "failures", "harness_errors")}))
    return 1 if s["failures"] or s["harness_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
