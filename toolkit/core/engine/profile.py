"""Where the time goes: the engine's per-op counters, read per op, per module region and per token.

    with m.profile() as prof:                 # toolkit.Model.profile() builds a Profiler
        m.generate("The capital of France is", max_new_tokens=8)
    print(prof.table())                       # per-layer and per-op tables, with a roofline
    prof.export_chrome_trace("trace.json")    # open in https://ui.perfetto.dev

The C engine counts every op it runs (calls, wall time as the caller sees it, bytes read and
written - weights at their stored size - and FLOPs; see the profiler section of cengine.h). This
module switches that on, tags each op with the module it ran in (regions named by hook paths:
`blocks.3.attn`, `blocks.3.mlp`, `unembed`, ...; `Module.__call__` reports to `_call_observer`)
and with the generation step it belongs to (`step()`, which generation also uses for its tokens/s:
one clock for every timing figure). Time inside a region that no op accounts for is Python.

Roofline: `machine_limits()` measures this machine's read bandwidth and GEMM peak once per process
(~0.3 s, with the engine's own benchmark kernels), so each op's GB/s and GFLOP/s can be read as a
share of what the machine can do. It must not run math of its own: everything goes through the engine.
"""
import bisect
import json
import os
import struct
import threading
import time
from contextlib import contextmanager

from toolkit import errors

from . import modules as _modules
from ._lib import check, ffi, lib

OPS = [ffi.string(lib.ce_op_name(i)).decode() for i in range(lib.CE_OP_COUNT)]
DEFAULT_LOG_CAPACITY = 1 << 21          # events (56 bytes each, allocated as used)
_EVENT = struct.Struct("<iiiiqqqqqq")   # ce_prof_event
if _EVENT.size != ffi.sizeof("ce_prof_event"):  # the header changed without this reader
    raise errors.BuildError(f"ce_prof_event is {ffi.sizeof('ce_prof_event')} bytes, profile.py reads {_EVENT.size}")

now_ns = time.monotonic_ns  # CLOCK_MONOTONIC, the clock of the engine's events (ce_profile_now_ns)

_active = None                          # the running Profiler (the engine's counters are global)
_active_lock = threading.Lock()


def compiled():
    """False when the engine was built with TOOLKIT_NO_PROFILE=1 (CE_NO_PROFILE)."""
    return bool(lib.ce_profile_compiled())


def build_copy_without_profiler(dest):
    """Copies the engine and package sources of this checkout into dest and builds the engine there
    with TOOLKIT_NO_PROFILE=1 (CE_NO_PROFILE), for comparing against a build with the profiler
    compiled out (python -m toolkit.bench profiler). Needs a source checkout and a C compiler."""
    import shutil
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    for part in ("cengine", "toolkit"):
        shutil.copytree(os.path.join(root, part), os.path.join(dest, part),
                        ignore=shutil.ignore_patterns("*.so", "*.o", "__pycache__"))
    r = subprocess.run([sys.executable, os.path.join(dest, "cengine", "build_cengine.py")],
                       env=dict(os.environ, TOOLKIT_NO_PROFILE="1"), capture_output=True, text=True)
    if r.returncode:
        raise errors.ToolkitError(f"building the engine without the profiler failed:\n{r.stderr[-2000:]}")


def read_counters():
    """The engine's counters now: {op name: dict(calls, failed, seconds, bytes_read, ...)}."""
    raw = ffi.new("ce_prof_stats[]", lib.CE_OP_COUNT)
    check(lib.ce_profile_read(raw, lib.CE_OP_COUNT))
    out = {}
    for i, name in enumerate(OPS):
        s = raw[i]
        out[name] = dict(calls=s.calls, failed=s.failed, seconds=s.ns * 1e-9, bytes_read=s.bytes_read,
                         bytes_written=s.bytes_written, weight_bytes=s.weight_bytes, flops=s.flops)
    return out


# ---- steps: one clock for generation's tokens/s and the profiler's per-token rows ----
class Step:
    """One timed step (a prefill or a decode pass): `seconds` once it has finished."""

    __slots__ = ("phase", "tokens", "t0", "t1")

    def __init__(self, phase, tokens):
        self.phase, self.tokens, self.t0, self.t1 = phase, tokens, now_ns(), None

    @property
    def seconds(self):
        return ((self.t1 if self.t1 is not None else now_ns()) - self.t0) * 1e-9


@contextmanager
def step(phase, tokens=1):
    """Times one generation step; a running profiler also records it as a per-token row."""
    s = Step(phase, tokens)
    try:
        yield s
    finally:
        s.t1 = now_ns()
        prof = _active
        if prof is not None:
            prof._steps.append(s)


# ---- the machine's limits, for the roofline ----
_limits = None


def machine_limits():
    """{'read_gb_s', 'gemm_gflop_s', 'threads'}: this machine's streaming read bandwidth and its
    best F32/Q4_1 GEMM rate, measured by the engine once per process (and per thread count)."""
    global _limits
    threads = lib.ce_get_threads()
    if _limits is not None and _limits["threads"] == threads:
        return dict(_limits)
    from . import functional as F
    from .backend import bench_read_bandwidth
    from .tensor import Tensor

    paused = _active                                  # the measurement is not part of a profile
    if paused is not None:
        lib.ce_profile_enable(0, paused._capacity)
    try:
        nbytes = 128 << 20                                   # 4x a large L3: a DRAM stream
        read = nbytes / bench_read_bandwidth(nbytes, 3) / 1e9
        M, N, K = 256, 1536, 576                             # a prefill chunk of the default model
        x = Tensor((M, K))                                   # zeros: values do not change the speed
        best = 0.0
        for dtype in ("F32", "Q4_1"):
            w = Tensor((N, K), dtype)
            out = Tensor((M, N))
            for _ in range(3):
                t0 = now_ns()
                F.matmul(x, w, out=out)
                best = max(best, 2.0 * M * N * K / max(now_ns() - t0, 1))
    finally:
        if paused is not None:
            check(lib.ce_profile_enable(1, paused._capacity))
    _limits = dict(read_gb_s=read, gemm_gflop_s=best, threads=threads)
    return dict(_limits)


# ---- the profiler ----
class _Observer:
    """What `Module.__call__` reports to while a profiler runs: opens and closes a region per
    named module (its hook path) and tags the engine's ops with the innermost one."""

    __slots__ = ("prof", "prev", "local")

    def __init__(self, prof, prev):
        self.prof, self.prev, self.local = prof, prev, threading.local()

    def enter(self, module):
        if self.prev is not None:
            self.prev.enter(module)
        path = module.hook_path
        if not path:
            return
        stack = getattr(self.local, "stack", None)
        if stack is None:
            stack = self.local.stack = []
        prof = self.prof
        rid = prof._region_ids.get(path)
        if rid is None:
            rid = prof._new_region(path, stack[-1][0] if stack else 0)
        stack.append((rid, now_ns()))
        lib.ce_profile_set_region(rid)

    def exit(self, module):
        try:
            stack = getattr(self.local, "stack", None)
            # a module entered before the profile started (or exited after it stopped) is not ours
            if module.hook_path and stack and self.prof._region_ids.get(module.hook_path) == stack[-1][0]:
                rid, t0 = stack.pop()
                t1 = now_ns()
                if _active is self.prof:
                    lib.ce_profile_set_region(stack[-1][0] if stack else 0)
                    self.prof._intervals.append((rid, t0, t1, len(stack), threading.get_ident()))
        finally:
            if self.prev is not None:
                self.prev.exit(module)


class Profiler:
    """Counts the engine's work while active (`with Profiler() as prof:`); then reports it.

    Only one profiler runs at a time (the engine's counters are process-wide). Results do not
    change: the engine computes the same bits with the profiler on or off.
    """

    def __init__(self, log_capacity=DEFAULT_LOG_CAPACITY):
        if isinstance(log_capacity, bool) or not isinstance(log_capacity, int) or log_capacity < 0:
            raise errors.InvalidArgumentError(f"log_capacity must be an int >= 0, got {log_capacity!r}")
        self._capacity = log_capacity
        self._regions = []           # [path]; region id = index + 1
        self._parents = []           # [parent region id] (0: top level)
        self._region_ids = {}
        self._intervals = []         # (region id, t0 ns, t1 ns, depth, thread ident)
        self._steps = []
        self._events = None
        self._counters = None
        self._t0 = self._t1 = None
        self._observer = None
        self._dropped = 0

    # ---- running ----
    def _new_region(self, path, parent):
        self._regions.append(path)
        self._parents.append(parent)
        rid = self._region_ids[path] = len(self._regions)
        return rid

    def start(self):
        global _active
        if not compiled():
            raise errors.EngineError("this engine was built without the profiler (TOOLKIT_NO_PROFILE=1); rebuild it")
        with _active_lock:
            if _active is not None:
                raise errors.InvalidArgumentError("a profiler is already running; profiles do not nest")
            if self._t0 is not None:
                raise errors.InvalidArgumentError("this profiler has already run; make a new one")
            _active = self
        lib.ce_profile_reset()
        lib.ce_profile_set_region(0)
        self._observer = _Observer(self, getattr(_modules, "_call_observer", None))
        _modules._call_observer = self._observer
        self._t0 = now_ns()
        check(lib.ce_profile_enable(1, self._capacity))
        return self

    def stop(self):
        global _active
        if _active is not self:
            return self
        lib.ce_profile_enable(0, 0)
        self._t1 = now_ns()
        _modules._call_observer = self._observer.prev
        lib.ce_profile_set_region(0)
        try:
            self._counters = read_counters()
            n = lib.ce_profile_event_count()
            buf = ffi.new("ce_prof_event[]", max(n, 1))
            got = lib.ce_profile_events(buf, 0, n)
            self._events = list(_EVENT.iter_unpack(ffi.buffer(buf, got * _EVENT.size))) if got > 0 else []
            self._dropped = lib.ce_profile_dropped()
        finally:
            lib.ce_profile_reset()
            with _active_lock:
                _active = None
        return self

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _done(self):
        if self._counters is None:
            raise errors.InvalidArgumentError("the profile has no results until it stops (leave the `with` block)")

    # ---- results ----
    @property
    def wall_seconds(self):
        """Seconds between start and stop."""
        self._done()
        return (self._t1 - self._t0) * 1e-9

    @property
    def op_seconds(self):
        """Seconds inside engine ops (the calling thread's view); the rest of the wall time is Python."""
        self._done()
        return sum(c["seconds"] for c in self._counters.values())

    @property
    def dropped_events(self):
        """Ops counted but not logged (the event log was full): per-layer and per-token figures miss them."""
        return self._dropped

    def by_op(self):
        """{op: calls, seconds, bytes_read, bytes_written, weight_bytes, flops, gb_per_s, gflop_per_s,
        share (of op time)}, ops that ran only, slowest first."""
        self._done()
        total = self.op_seconds or 1.0
        rows = {}
        for name, c in sorted(self._counters.items(), key=lambda kv: -kv[1]["seconds"]):
            if not c["calls"] and not c["failed"]:
                continue
            s = c["seconds"]
            rows[name] = dict(c, gb_per_s=_rate(c["bytes_read"] + c["bytes_written"], s),
                              gflop_per_s=_rate(c["flops"], s), share=s / total)
        return rows

    def _region_events(self):
        """Per region id (0: outside every region): [seconds, bytes_read, bytes_written, weight_bytes,
        flops, {op: seconds}], the region's own ops only."""
        own = {}
        for op, region, _th, _pad, _t0, dur, rd, wr, wb, fl in self._events:
            r = own.get(region)
            if r is None:
                r = own[region] = [0, 0, 0, 0, 0, {}]
            r[0] += dur
            r[1] += rd
            r[2] += wr
            r[3] += wb
            r[4] += fl
            r[5][OPS[op]] = r[5].get(OPS[op], 0) + dur
        return own

    def by_layer(self):
        """{region (hook path): parent, calls, seconds (wall, inclusive), op_seconds (its ops and its
        subregions'), python_seconds (the rest), bytes_read, bytes_written, weight_bytes, flops,
        ops {op: seconds}}, in the order regions were first entered. "(outside modules)" holds
        ops that ran in no region (sampling, the logits row copy, ...)."""
        self._done()
        own = self._region_events()
        n = len(self._regions)
        incl = [[0, 0, 0, 0, 0, {}] for _ in range(n + 1)]
        for rid, r in own.items():
            at = rid
            while True:                             # add to the region and every ancestor
                acc = incl[at]
                for k in range(5):
                    acc[k] += r[k]
                for op, d in r[5].items():
                    acc[5][op] = acc[5].get(op, 0) + d
                if at == 0:
                    break
                at = self._parents[at - 1]
                if at == 0:
                    break
        wall = [0] * (n + 1)
        calls = [0] * (n + 1)
        for rid, t0, t1, _depth, _th in self._intervals:
            wall[rid] += t1 - t0
            calls[rid] += 1
        out = {}
        for rid in range(1, n + 1):
            a = incl[rid]
            parent = self._parents[rid - 1]
            out[self._regions[rid - 1]] = dict(
                parent=self._regions[parent - 1] if parent else None, calls=calls[rid], seconds=wall[rid] * 1e-9, op_seconds=a[0] * 1e-9,
                python_seconds=max(wall[rid] - a[0], 0) * 1e-9, bytes_read=a[1], bytes_written=a[2],
                weight_bytes=a[3], flops=a[4], ops={k: v * 1e-9 for k, v in a[5].items()})
        if 0 in own:
            a = own[0]
            out["(outside modules)"] = dict(
                parent=None, calls=0, seconds=None, op_seconds=a[0] * 1e-9, python_seconds=None, bytes_read=a[1],
                bytes_written=a[2], weight_bytes=a[3], flops=a[4], ops={k: v * 1e-9 for k, v in a[5].items()})
        return out

    def per_token(self):
        """One row per generation step (prefill, then each decode token), as `step()` timed them
        (the same times as generation's TokenEvent.seconds): phase, tokens, seconds (the step's
        wall time), tokens_per_s, op_seconds (ops inside it), python_seconds (the rest),
        sampling_seconds (ops outside every module during the step or after it, before the next:
        sampling, token probabilities, loading ids), between_seconds (ops after the step, before
        the next: what the caller ran between passes), flops, bytes_read, weight_bytes. Empty when
        nothing ran through generation."""
        self._done()
        steps = sorted(self._steps, key=lambda s: s.t0)
        rows = []
        starts = [s.t0 for s in steps]
        acc = [[0, 0, 0, 0, 0, 0] for _ in steps]   # op ns inside, outside modules, flops, bytes_read, weight, after
        for op, region, _th, _pad, t0, dur, rd, _wr, wb, fl in self._events:
            i = bisect.bisect_right(starts, t0) - 1
            if i < 0:
                continue
            a = acc[i]
            inside = t0 + dur <= steps[i].t1
            if inside:
                a[0] += dur
                a[2] += fl
                a[3] += rd
                a[4] += wb
            else:
                a[5] += dur
            if not region:
                a[1] += dur
        for i, s in enumerate(steps):
            a = acc[i]
            sec = (s.t1 - s.t0) * 1e-9
            rows.append(dict(index=i, phase=s.phase, tokens=s.tokens, seconds=sec,
                             tokens_per_s=s.tokens / sec if sec > 0 else 0.0, op_seconds=a[0] * 1e-9,
                             python_seconds=max(sec - a[0] * 1e-9, 0.0), sampling_seconds=a[1] * 1e-9,
                             between_seconds=a[5] * 1e-9,
                             flops=a[2], bytes_read=a[3], weight_bytes=a[4]))
        return rows

    def roofline(self, limits=None):
        """by_op() with each op's share of the machine's limits: pct_bandwidth (GB/s against the
        measured read bandwidth), pct_peak (GFLOP/s against the GEMM peak), intensity (FLOP per
        byte) and bound ("memory" when its intensity is below peak / bandwidth)."""
        lim = limits or machine_limits()
        ridge = lim["gemm_gflop_s"] / lim["read_gb_s"]
        rows = self.by_op()
        for r in rows.values():
            moved = r["bytes_read"] + r["bytes_written"]
            r["intensity"] = r["flops"] / moved if moved else 0.0
            r["pct_bandwidth"] = 100.0 * r["gb_per_s"] / lim["read_gb_s"]
            r["pct_peak"] = 100.0 * r["gflop_per_s"] / lim["gemm_gflop_s"]
            r["bound"] = "memory" if r["intensity"] < ridge else "compute"
        return rows

    def to_dict(self, roofline=True):
        """Everything, JSON-ready: totals, by_op (with the roofline), by_layer, per_token, machine."""
        self._done()
        from .backend import build_info

        lim = machine_limits() if roofline else None
        return dict(wall_seconds=self.wall_seconds, op_seconds=self.op_seconds,
                    python_seconds=max(self.wall_seconds - self.op_seconds, 0.0),
                    by_op=self.roofline(lim) if roofline else self.by_op(), by_layer=self.by_layer(),
                    per_token=self.per_token(), machine=lim, threads=lib.ce_get_threads(),
                    engine=build_info(), dropped_events=self._dropped)

    def _layer_table(self, every):
        rows = self.by_layer()
        if not rows:
            return []
        tops, kids = [], {}                       # top-level regions; their subregions by last name
        for path, r in rows.items():
            rid = self._region_ids.get(path)
            parent = self._parents[rid - 1] if rid else 0
            if every or not parent:
                tops.append(path)
            if parent and not self._parents[parent - 1]:
                kids.setdefault(self._regions[parent - 1], {})[path.rsplit(".", 1)[-1]] = r
        kinds = list(dict.fromkeys(k for sub in kids.values() for k in sub)) if not every else []
        ms = lambda v: "" if v is None else f"{v * 1e3:.3f}"  # noqa: E731
        head = (f"{'region':<22}{'calls':>6}{'wall ms':>10}{'ops ms':>10}{'python ms':>10}"
                + "".join(f"{k + ' ms':>10}" for k in kinds) + f"{'GFLOP':>9}{'MB read':>9}  top op")
        out = ["", head, "-" * len(head)]

        def line(name, r, sub):
            top = max(r["ops"].items(), key=lambda kv: kv[1])[0] if r["ops"] else ""
            return (f"{name:<22}{r['calls'] or '':>6}{ms(r['seconds']):>10}{ms(r['op_seconds']):>10}"
                    f"{ms(r['python_seconds']):>10}" + "".join(f"{ms(sub[k]['seconds']) if k in sub else '':>10}" for k in kinds)
                    + f"{r['flops'] / 1e9:>9.3f}{r['bytes_read'] / 1e6:>9.2f}  {top}")

        for path in tops:
            out.append(line(path, rows[path], kids.get(path, {})))
        if kinds and len(kids) > 1:                # each sublayer summed over the layers
            out.append("")
            for k in kinds:
                rs = [sub[k] for sub in kids.values() if k in sub]
                tot = dict(calls=sum(r["calls"] for r in rs), seconds=sum(r["seconds"] for r in rs),
                           op_seconds=sum(r["op_seconds"] for r in rs),
                           python_seconds=sum(r["python_seconds"] for r in rs), flops=sum(r["flops"] for r in rs),
                           bytes_read=sum(r["bytes_read"] for r in rs), ops={})
                for r in rs:
                    for op, v in r["ops"].items():
                        tot["ops"][op] = tot["ops"].get(op, 0) + v
                out.append(line(f"all *.{k} ({len(rs)})", tot, {}))
        return out

    def table(self, roofline=True, layers=True, tokens=True):
        """The per-layer and per-op tables as text (with the roofline unless roofline=False).

        layers=True: one row per top-level region (embed, blocks.N, ln_final, unembed) with its
        sublayers' wall times as columns, then each sublayer summed over the layers; "all": a row
        for every region; False: no layer table. tokens: the per-token table of a generation."""
        self._done()
        wall, ops = self.wall_seconds, self.op_seconds
        out = [f"profile: {wall * 1e3:.2f} ms wall, {ops * 1e3:.2f} ms in engine ops "
               f"({100 * ops / wall if wall else 0:.0f}%), {max(wall - ops, 0) * 1e3:.2f} ms Python, "
               f"{lib.ce_get_threads()} threads"]
        if self._dropped:
            out.append(f"(event log full: {self._dropped} ops missing from the per-layer and per-token rows)")
        steps = self.per_token()
        if steps:
            pre = [s for s in steps if s["phase"] == "prefill"]
            dec = [s for s in steps if s["phase"] != "prefill"]
            line = []
            if pre:
                t, sec = sum(s["tokens"] for s in pre), sum(s["seconds"] for s in pre)
                line.append(f"prefill {t} tokens in {sec * 1e3:.1f} ms = {_rate(t, sec) * 1e9:.1f} tok/s")
            if dec:
                t, sec = sum(s["tokens"] for s in dec), sum(s["seconds"] for s in dec)
                line.append(f"decode {t} tokens in {sec * 1e3:.1f} ms = {_rate(t, sec) * 1e9:.1f} tok/s")
            out.append("steps: " + " | ".join(line))
            if tokens:
                out += _token_table(steps)
        if layers:
            out += self._layer_table(every=layers == "all")
        lim = machine_limits() if roofline else None
        rows = self.roofline(lim) if roofline else self.by_op()
        out.append("")
        if lim:
            out.append(f"machine: read {lim['read_gb_s']:.1f} GB/s, GEMM peak {lim['gemm_gflop_s']:.1f} GFLOP/s "
                       f"(measured, {lim['threads']} threads)")
        head = (f"{'op':<20}{'calls':>7}{'ms':>10}{'share':>7}{'us/call':>9}{'GB/s':>8}{'GFLOP/s':>9}"
                + (f"{'%bw':>6}{'%peak':>7}  bound" if lim else ""))
        out += [head, "-" * len(head)]
        for name, r in rows.items():
            line = (f"{name:<20}{r['calls']:>7}{r['seconds'] * 1e3:>10.3f}{100 * r['share']:>6.1f}%"
                    f"{r['seconds'] * 1e6 / r['calls'] if r['calls'] else 0:>9.1f}{r['gb_per_s']:>8.1f}{r['gflop_per_s']:>9.1f}")
            if lim:
                line += f"{r['pct_bandwidth']:>5.0f}%{r['pct_peak']:>6.0f}%  {r['bound']}"
            out.append(line)
        return "\n".join(out)

    def __repr__(self):
        if self._counters is None:
            return "<Profiler (running)>" if _active is self else "<Profiler (not started)>"
        return f"<Profiler {self.wall_seconds * 1e3:.1f} ms wall, {self.op_seconds * 1e3:.1f} ms in ops>"

    # ---- traces ----
    def chrome_trace(self):
        """The profile as a Chrome trace-event dict (Perfetto, chrome://tracing): one track per
        top-level region (embed, blocks.0, ..., unembed) with its subregions and ops nested inside,
        a track of generation steps, and one for ops outside every region."""
        self._done()
        base = self._t0
        pid = 1
        events = [dict(name="process_name", ph="M", pid=pid, tid=0, ts=0, args=dict(name="cengine-toolkit"))]
        tids = {}

        def track(name, order):
            tid = tids.get(name)
            if tid is None:
                tid = tids[name] = len(tids) + 1
                events.append(dict(name="thread_name", ph="M", pid=pid, tid=tid, ts=0, args=dict(name=name)))
                events.append(dict(name="thread_sort_index", ph="M", pid=pid, tid=tid, ts=0,
                                   args=dict(sort_index=order)))
            return tid

        def us(ns):
            return round((ns - base) / 1000.0, 3)

        top = {}                                    # region id -> its top-level ancestor's id
        for rid in range(1, len(self._regions) + 1):
            at = rid
            while self._parents[at - 1]:
                at = self._parents[at - 1]
            top[rid] = at
        if self._steps:
            tid = track("generation steps", 0)
            for i, s in enumerate(sorted(self._steps, key=lambda s: s.t0)):
                events.append(dict(name=f"{s.phase} #{i}", cat="step", ph="X", ts=us(s.t0),
                                   dur=round((s.t1 - s.t0) / 1000.0, 3), pid=pid, tid=tid,
                                   args=dict(tokens=s.tokens)))
        for rid, t0, t1, depth, _th in sorted(self._intervals, key=lambda iv: (iv[1], iv[3])):
            tid = track(self._regions[top[rid] - 1], top[rid])
            events.append(dict(name=self._regions[rid - 1], cat="region", ph="X", ts=us(t0),
                               dur=round((t1 - t0) / 1000.0, 3), pid=pid, tid=tid))
        for op, region, _th, _pad, t0, dur, rd, wr, wb, fl in self._events:
            tid = track(self._regions[top[region] - 1], top[region]) if region else \
                track("ops outside modules", len(self._regions) + 1)
            events.append(dict(name=OPS[op], cat="op", ph="X", ts=us(t0), dur=round(dur / 1000.0, 3), pid=pid,
                               tid=tid, args=dict(bytes_read=rd, bytes_written=wr, flops=fl)))
        return dict(traceEvents=events, displayTimeUnit="ms")

    def export_chrome_trace(self, path):
        """Writes chrome_trace() as JSON to path (open it in https://ui.perfetto.dev)."""
        path = os.fspath(path)
        tmp = f"{path}.{os.getpid()}.tmp"   # written whole, then renamed: never a half trace
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(self.chrome_trace(), f)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return path


def _token_table(steps, head_rows=12, tail_rows=4):
    head = f"{'step':>5}  {'phase':<8}{'tokens':>7}{'wall ms':>10}{'ops ms':>10}{'python ms':>10}{'sampling ms':>12}{'tok/s':>9}"
    out = ["", head, "-" * len(head)]
    shown = steps if len(steps) <= head_rows + tail_rows else steps[:head_rows] + [None] + steps[-tail_rows:]
    for r in shown:
        if r is None:
            out.append(f"{'...':>5}")
            continue
        out.append(f"{r['index']:>5}  {r['phase']:<8}{r['tokens']:>7}{r['seconds'] * 1e3:>10.3f}{r['op_seconds'] * 1e3:>10.3f}"
                   f"{r['python_seconds'] * 1e3:>10.3f}{r['sampling_seconds'] * 1e3:>12.3f}{r['tokens_per_s']:>9.1f}")
    return out


def _rate(amount, seconds):
    return amount / seconds / 1e9 if seconds > 0 else 0.0
