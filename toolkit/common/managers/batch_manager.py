"""BatchManager: continuous batching of many generation requests over one model.

Each pass stacks the new tokens of every running request (a prompt chunk for one being prefilled,
one token for the others) so each weight matrix is streamed once for the whole batch; attention runs
per request over its own KV cache. Requests join as others leave, between any two passes.

- Requests carry their own sampling settings, seed, stop strings, max_new_tokens and, optionally,
  hooks that see only their rows. A stop string is matched here, by generation's StopMatcher, so a
  stopped request leaves the batch in the pass that completed it.
- Prefill is chunked (`prefill_chunk` prompt tokens per pass, shared by the requests being prefilled
  in arrival order; None: whole prompts), so a long prompt does not stall the running requests'
  decoding for long.
- KV memory: a request reserves, and its cache holds, exactly prompt + max_new_tokens slots. With a
  budget (`kv_budget_tokens` or `kv_budget_bytes`) requests that do not fit wait in FIFO order; one
  that could never fit is refused at `add_request`. Finished and cancelled requests free their slots
  before the next pass. `kv_usage` reports what is reserved now and the peak.
- Threads: `add_request`, `cancel`, `discard`, `status`, `stream` and `wait` may be called from any
  thread while another steps; one pass runs at a time and the forward pass itself runs outside the
  manager's lock. Requests are collected once: by `step()`, `run()` or `wait(ids)`; ids claimed by
  a `wait` (or added with private=True) are never handed to `step()` or `run()`.
- Failures: a request whose token cannot be drawn or decoded, whose cache cannot be allocated, or
  one of whose own hooks raises, ends with finish_reason 'error' (the exception in its result's
  `error`, re-raised by whoever collects it) and the others go on: a failed pass leaves every
  other request as it was before it. Any other exception from a pass (KeyboardInterrupt, a global
  hook's error) leaves every request as it was and re-raises in the stepping thread.
- Batch invariance: a request's tokens and logits are bit-identical whatever shares its passes and
  however its prompt is chunked, given the engine's batch-invariant matmul (on by default: every
  matmul row's bits independent of the other rows); the scheduling never changes what a request
  computes.
"""
import inspect
import sys
import threading
from collections import OrderedDict, deque

from toolkit import errors

from ..generation import SamplingParams, check_request, eos_ids
from .batch_request import (CANCELLED, DECODE, FINISHED, PREFILL, QUEUED, BatchResult, BatchToken,  # noqa: F401
                            Request, RequestStatus, check_hooks, check_request_id, check_token_ids)
from .kv_budget import KVBudget, KVUsage  # noqa: F401


def _accepts_seq_hooks(model):
    try:
        return "seq_hooks" in inspect.signature(model.forward_batch).parameters
    except (TypeError, ValueError, AttributeError):
        return False


class BatchManager:
    def __init__(self, model, max_batch_size=16, defaults=None, *, prefill_chunk=256, kv_budget_tokens=None,
                 kv_budget_bytes=None, tokenizer=None):
        """model: toolkit.load's handle, or anything with forward_batch, new_cache and config (a
        LlamaModel). defaults: default sampling settings (for a handle: its load-time ones). tokenizer (default model.tokenizer) decodes text for stop strings and results."""
        if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise errors.InvalidArgumentError(f"max_batch_size must be a positive int, got {max_batch_size!r}")
        if prefill_chunk is not None and (isinstance(prefill_chunk, bool) or not isinstance(prefill_chunk, int)
                                          or prefill_chunk < 1):
            raise errors.InvalidArgumentError(f"prefill_chunk must be a positive int or None, got {prefill_chunk!r}")
        if not hasattr(model, "forward_batch"):
            inner = getattr(model, "model", None)  # toolkit.load's handle: its model module (ClosedError if closed)
            if hasattr(inner, "forward_batch"):
                if defaults is None:  # the handle's load-time generation defaults, as its generate() uses
                    defaults = getattr(getattr(model, "plugin", None), "sampling_defaults", None)
                model = inner
        missing = [a for a in ("forward_batch", "new_cache", "config") if not hasattr(model, a)]
        if missing:
            raise errors.ArgumentTypeError(f"BatchManager needs a model (toolkit.load's handle, or a module with "
                                           f"forward_batch, new_cache and config), got {type(model).__name__}")
        self.model = model
        self.max_batch_size = max_batch_size
        self.prefill_chunk = prefill_chunk
        self.defaults = dict(defaults or {})
        SamplingParams.from_kwargs(self.defaults)  # bad defaults fail here, not at the first request
        self.tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
        self._eos = eos_ids(model)
        self._budget = KVBudget(model, kv_budget_tokens, kv_budget_bytes)
        self._seq_hooks_ok = _accepts_seq_hooks(model)
        self._cond = threading.Condition(threading.RLock())   # guards everything below
        self._step_lock = threading.Lock()                     # one pass at a time
        self._requests = {}          # rid -> Request, from add_request until its result is collected
        self._queued = deque()       # waiting for a batch slot and KV budget, FIFO
        self._active = []            # admitted: prefilling or decoding, in admission order
        self._finished = OrderedDict()  # rid -> Request with a result nobody collected yet, finishing order
        self._claimed = set()        # rids only wait() collects (private, or being waited for)
        self._waited = set()         # rids a wait() running now will collect
        self._last_rid = None
        self._pass_thread = None     # the thread running a pass now (its hooks run there too)
        self._hook_failure = None    # (request, exception) of the request hook that raised in this pass

    # ---- submitting and inspecting ----
    def add_request(self, request_id, token_ids, *, hooks=None, keep_logits=False, private=False, **sampling):
        """Queues a request. token_ids: the prompt (ints, whole-number floats as the guide's tokenize
        returns, or a Tensor). sampling: SamplingParams fields (max_new_tokens, temperature, seed,
        stop, ...) over the manager's defaults. hooks: a list of (hook name, fn) for this request's
        rows only. keep_logits: keep the logits row each token was drawn from in the result.
        private: only `wait([request_id])` collects the result; `step()` and `run()` pass it by (for
        callers sharing one manager, as `infer_batch` from several threads does)."""
        check_request_id(request_id)
        prompt = check_token_ids(request_id, token_ids, self.model.config.vocab_size)
        params = SamplingParams.from_kwargs(self.defaults, **sampling)
        check_request(self.model, prompt, params)
        hooks = check_hooks(request_id, hooks)
        if hooks and not self._seq_hooks_ok:
            raise errors.UnsupportedError(
                f"request {request_id!r} has hooks, but {type(self.model).__name__}.forward_batch takes no "
                "seq_hooks (per-sequence hooks)")
        resolve = getattr(getattr(self.model, "hook_set", None), "resolve", None)
        for name, _ in hooks or ():
            if resolve is not None:
                resolve(name)  # an unknown hook name fails here, not in the middle of a shared pass
        if params.stop and self.tokenizer is None:
            raise errors.InvalidArgumentError(f"request {request_id!r} has stop strings but the manager has no "
                                              "tokenizer to decode text with")
        if not isinstance(keep_logits, bool) or not isinstance(private, bool):
            raise errors.ArgumentTypeError(f"keep_logits and private must be bools, got {keep_logits!r}, {private!r}")
        if params.max_new_tokens:
            self._budget.check_fits(request_id, len(prompt) + params.max_new_tokens)
        req = Request(request_id, prompt, params, self._eos, self.tokenizer, hooks, keep_logits)
        if req.hooks:
            req.hooks = [(name, self._owned_hook(req, fn)) for name, fn in req.hooks]
        with self._cond:
            if request_id in self._requests:
                raise errors.InvalidArgumentError(f"request id {request_id!r} is already in use")
            self._requests[request_id] = req
            self._queued.append(req)
            if private:
                self._claimed.add(request_id)
            self._cond.notify_all()

    def cancel(self, request_id):
        """Stops a request now; its KV slots are free before the next pass (after the one running,
        if it is in it). Returns False if it had already finished. Its result (finish_reason
        'cancelled', the tokens made so far) is collected like any other."""
        with self._cond:
            req = self._lookup(request_id)
            if req.done:
                return False
            if req.state == QUEUED:
                self._queued.remove(req)
            self._finish(req, "cancelled")
            return True

    def discard(self, request_id):
        """Cancels a request if it still runs and forgets it and its result, whoever would have
        collected it. Returns False if no such request is known (never added, or collected)."""
        with self._cond:
            check_request_id(request_id)
            req = self._requests.get(request_id)
            if req is None:
                return False
            if not req.done:
                if req.state == QUEUED:
                    self._queued.remove(req)
                self._finish(req, "cancelled")
            self._collect(request_id)
            return True

    def status(self, request_id):
        """A RequestStatus: state (queued, prefill, decode, finished, cancelled) and progress."""
        with self._cond:
            return self._lookup(request_id).status()

    def stream(self, request_id):
        """An iterator of BatchToken (token id, text made final) for one request, from its first token
        to its end; it runs passes itself while no other thread is stepping, else waits for them."""
        with self._cond:
            req = self._lookup(request_id)

        def events():
            i = 0
            while True:
                self._run_until(lambda: i < len(req.events) or req.done)
                with self._cond:
                    new, i = req.events[i:], len(req.events)
                    done = req.done
                yield from new
                if done and i == len(req.events):
                    return
        return events()

    @property
    def kv_usage(self):
        """KVUsage: KV slots and bytes reserved now, the peak, and the budget."""
        with self._cond:
            return self._budget.usage()

    @property
    def pending(self):
        """Requests not yet finished (queued or running)."""
        with self._cond:
            return len(self._queued) + len(self._active)

    @property
    def last_request_id(self):
        """The id of the request whose ids `step()` last returned (step returns only the ids Tensor,
        as in the plugin guide). With several threads collecting, use `run()` or `wait()` instead."""
        return self._last_rid

    # ---- running ----
    def forward_step(self):
        """One forward pass over every running request (admitting waiting ones first); returns the
        ids of requests that finished in it. Blocks while another thread's pass runs."""
        self._not_from_own_pass("forward_step")
        try:
            with self._step_lock:
                return self._pass()
        finally:
            with self._cond:
                self._cond.notify_all()  # waiters that saw the step lock held may step now

    def step(self):
        """Runs passes until a request finishes; returns its generated ids (I32 Tensor), or None
        when nothing is left to run. `last_request_id` names the request."""
        while True:
            with self._cond:
                for rid in self._finished:
                    if rid not in self._claimed:
                        self._last_rid = rid
                        res = self._collect(rid)
                        if res.error is not None:
                            raise res.error
                        return res.tensor()
                if not (self._queued or self._active):
                    return None
            self.forward_step()

    def run(self):
        """Runs every request to completion; returns {request id: BatchResult} for every request
        finished and not yet collected (cancelled ones included; one that failed has
        finish_reason 'error' and the exception in `error`)."""
        results = {}
        while True:
            with self._cond:
                for rid in [r for r in self._finished if r not in self._claimed]:
                    results[rid] = self._collect(rid)
                if not (self._queued or self._active):
                    return results
            self.forward_step()

    def wait(self, request_ids):
        """Runs (or, while another thread steps, waits for) passes until every request in
        request_ids has finished; returns their BatchResults in the order given, or raises the
        error of the first that failed (all of them are collected either way)."""
        rids = list(request_ids)
        with self._cond:
            if len(set(map(check_request_id, rids))) != len(rids):
                raise errors.InvalidArgumentError("wait() was given the same request id twice")
            for rid in rids:
                self._lookup(rid)
                if rid in self._waited:
                    raise errors.InvalidArgumentError(f"request {rid!r} is already being waited for")
            self._waited.update(rids)
            self._claimed.update(rids)
        try:
            self._run_until(lambda: all(self._requests[r].done for r in rids))
            with self._cond:
                results = [self._collect(r) for r in rids]
        finally:
            with self._cond:
                self._waited.difference_update(rids)
        for r in results:
            if r.error is not None:
                raise r.error
        return results

    # ---- internals (the caller holds self._cond unless said otherwise) ----
    def _lookup(self, rid):
        try:
            req = self._requests.get(rid)
        except TypeError:
            raise errors.ArgumentTypeError(f"a request id must be hashable, got a {type(rid).__name__}") from None
        if req is None:
            raise errors.InvalidArgumentError(f"no request with id {rid!r} (never added, or its result was "
                                              "already collected)")
        return req

    def _collect(self, rid):
        req = self._finished.pop(rid)
        del self._requests[rid]
        self._claimed.discard(rid)
        return req.result

    def _finish(self, req, reason):
        req.state = CANCELLED if reason == "cancelled" else FINISHED
        req.finish_reason = reason
        req.close_text()
        if not req.in_flight:  # else the pass running now releases it when it returns
            self._release(req)
        req.result = req.make_result()
        self._finished[req.rid] = req
        self._cond.notify_all()

    def _release(self, req):
        if req in self._active:
            self._active.remove(req)
        self._budget.release(req.kv_tokens)
        req.kv_tokens = 0
        req.cache = None

    def _admit(self):
        while self._queued and len(self._active) < self.max_batch_size:
            req = self._queued[0]
            if req.params.max_new_tokens == 0:
                self._queued.popleft()
                self._finish(req, "length")
                continue
            if not self._budget.can_reserve(req.need):
                return  # FIFO: nothing overtakes the head of the queue
            self._queued.popleft()
            try:
                req.cache = self.model.new_cache(req.need)
            except (errors.ToolkitError, MemoryError) as exc:  # the request fails, not the pass
                req.error = exc
                self._finish(req, "error")
                continue
            self._budget.reserve(req.need)
            req.kv_tokens = req.need
            req.state = PREFILL
            self._active.append(req)

    def _plan(self):
        """(request, new tokens) for the next pass: every decoding request, and prompt chunks within
        prefill_chunk tokens in admission order."""
        left = self.prefill_chunk if self.prefill_chunk is not None else sys.maxsize
        plan = []
        for req in self._active:
            if req.prefilled < len(req.prompt):
                if left <= 0:
                    continue
                feed = req.feed(left)
                left -= len(feed)
            else:
                feed = req.feed(0)
            plan.append((req, feed))
        return plan

    def _owned_hook(self, req, fn):
        """fn, noting which request's hook raised: that request alone ends with the error."""
        def hook(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                self._hook_failure = (req, exc)
                raise
        return hook

    def _not_from_own_pass(self, what):
        """A hook runs inside a pass, on the stepping thread: waiting there for passes of this
        manager would wait for the pass it is part of, forever."""
        if self._pass_thread == threading.get_ident():
            raise errors.UnsupportedError(
                f"{what} was called from inside one of this BatchManager's own passes (a hook of one of its "
                f"requests?); it would wait for itself. Call the model directly there (m.logits, m.generate)")

    def _pass(self):
        """One pass; the caller holds _step_lock (not _cond)."""
        self._pass_thread = threading.get_ident()
        try:
            return self._pass_locked()
        finally:
            self._pass_thread = None

    def _pass_locked(self):
        with self._cond:
            self._admit()
            plan = self._plan()
            for req, _ in plan:
                req.in_flight = True
            starts = [req.cache.length for req, _ in plan]
        if not plan:
            return []
        kwargs = {}
        if any(req.hooks for req, _ in plan):
            kwargs["seq_hooks"] = [req.hooks for req, _ in plan]
        self._hook_failure = None
        try:
            logits = self.model.forward_batch([(feed, req.cache) for req, feed in plan], logits="last", **kwargs)
        except BaseException as exc:
            failed, self._hook_failure = self._hook_failure, None
            culprit = failed[0] if failed is not None and failed[1] is exc else None
            with self._cond:
                for (req, _), start in zip(plan, starts):
                    req.in_flight = False
                    if req.cache is not None and req.cache.length != start:
                        req.cache.truncate(start)  # the pass failed after filling the caches: undo it
                    if req.done:
                        self._release(req)
                if culprit is not None and not culprit.done:
                    # one request's hook raised: that request ends with its error (its collector
                    # re-raises it); the others lost nothing and go on in the next pass
                    culprit.error = exc
                    self._finish(culprit, "error")
                self._cond.notify_all()
            if culprit is not None:
                return [culprit.rid]
            raise
        finished = []
        with self._cond:
            for b, (req, feed) in enumerate(plan):
                req.in_flight = False
                if req.done:  # cancelled during the pass
                    self._release(req)
                    continue
                if req.prefilled < len(req.prompt):
                    req.prefilled += len(feed)
                    if req.prefilled < len(req.prompt):
                        continue  # more of the prompt to come: this chunk's logits are not needed
                    req.state = DECODE
                try:
                    row = logits[b]
                    if req.logits is not None:
                        req.logits.append(row.clone())  # before the sampler's penalty edits it in place
                    reason = req.accept(req.sampler.next(row))
                except Exception as exc:  # noqa: BLE001 - handed to the request's owner, not dropped
                    # one request's failure (say, logits a hook made NaN) must not stop the others
                    # mid-update: it ends with the error, which its collector re-raises
                    req.error = exc
                    reason = "error"
                if reason:
                    self._finish(req, reason)
                    finished.append(req.rid)
            self._cond.notify_all()
        return finished

    def _run_until(self, ready):
        """Returns once ready() (evaluated under the lock) holds, running passes while no other
        thread is, else sleeping until the pass running now ends."""
        self._not_from_own_pass("waiting for requests (run, step, wait, stream, infer_batch)")
        while True:
            with self._cond:
                if ready():
                    return
                if not (self._queued or self._active):
                    raise errors.ToolkitError("the batch manager went idle before the requests awaited finished")
            if self._step_lock.acquire(blocking=False):
                try:
                    self._pass()
                finally:
                    self._step_lock.release()
                    with self._cond:
                        self._cond.notify_all()
                continue
            with self._cond:
                # a stepper still holds the lock, so its notify comes after this wait begins
                if not ready() and self._step_lock.locked():
                    self._cond.wait(timeout=1.0)
