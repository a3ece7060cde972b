"""BatchManager: runs many generation requests together, one forward pass advancing all of them.

Each request owns a KV cache. A pass stacks the new tokens of every active request (a whole prompt
for a request just admitted, one token for the others) so each weight matrix is streamed once for
the whole batch; attention then runs per request over its own cache. Requests join as others finish
(continuous batching), up to max_batch_size at once.
"""
from collections import OrderedDict, deque

from toolkit import errors

from ...core.engine.backend import Tensor
from .. import validate
from ..generation import Sampler, SamplingParams, check_request, eos_ids


class _Request:
    __slots__ = ("rid", "prompt", "params", "sampler", "cache", "feed")

    def __init__(self, rid, prompt, params, sampler):
        self.rid, self.prompt, self.params, self.sampler = rid, prompt, params, sampler
        self.cache = None
        self.feed = prompt  # the tokens the next pass must run for this request


class BatchManager:
    def __init__(self, model, max_batch_size=8, defaults=None):
        if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise errors.InvalidArgumentError(f"max_batch_size must be a positive int, got {max_batch_size!r}")
        self.model = model
        self.max_batch_size = max_batch_size
        self.defaults = dict(defaults or {})
        self._queued = deque()
        self._active = []
        self._finished = OrderedDict()   # rid -> Tensor of generated ids, in finishing order
        self._ids = set()
        self.last_request_id = None

    def add_request(self, request_id, token_ids, **sampling):
        """Queues a request: token_ids are the prompt (ints, or whole-number floats as tokenize returns)."""
        if validate.request_id(request_id) in self._ids:
            raise errors.InvalidArgumentError(f"request id {request_id!r} is already in use")
        prompt = validate.token_ids(token_ids, self.model.config.vocab_size, f"request {request_id!r} token ids")
        params = SamplingParams.from_kwargs(self.defaults, **sampling)
        check_request(self.model, prompt, params)
        vocab = self.model.config.vocab_size
        bad = [t for t in prompt if not 0 <= t < vocab]
        if bad:
            raise errors.IndexOutOfRangeError(f"request {request_id!r}: token id {bad[0]} is outside 0..{vocab - 1}")
        self._ids.add(request_id)
        self._queued.append(_Request(request_id, prompt, params, Sampler(params, prompt, eos_ids(self.model))))

    @property
    def pending(self):
        return len(self._queued) + len(self._active)

    def _admit(self):
        while self._queued and len(self._active) < self.max_batch_size:
            req = self._queued.popleft()
            if req.sampler.done:  # max_new_tokens == 0
                self._finish(req)
                continue
            req.cache = self.model.new_cache(len(req.prompt) + req.params.max_new_tokens)
            self._active.append(req)

    def _finish(self, req):
        ids = req.sampler.generated
        t = Tensor((len(ids),), "I32")
        self._finished[req.rid] = t.load(ids) if ids else t
        req.cache = None

    def forward_step(self):
        """One forward pass over every active request; returns the ids of requests that finished."""
        self._admit()
        if not self._active:
            return []
        batch = self._active
        logits = self.model.forward_batch([(r.feed, r.cache) for r in batch], logits="last")  # [B, vocab]
        done = []
        for b, req in enumerate(batch):
            tok = req.sampler.next(logits[b])
            if req.sampler.done:
                done.append(req)
            else:
                req.feed = [tok]
        for req in done:
            self._active.remove(req)
            self._finish(req)
        return [r.rid for r in done]

    def step(self):
        """Runs passes until a request finishes; returns its generated ids (I32 Tensor) or None if idle.

        `last_request_id` names the request the returned tensor belongs to.
        """
        while not self._finished:
            if not self.pending:
                return None
            self.forward_step()
        rid, out = self._finished.popitem(last=False)
        self._ids.discard(rid)
        self.last_request_id = rid
        return out

    def run(self):
        """Runs every queued request to completion; returns {request id: generated ids Tensor}."""
        results = {}
        while True:
            out = self.step()
            if out is None:
                return results
            results[self.last_request_id] = out
