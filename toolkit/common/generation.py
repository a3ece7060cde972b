"""Autoregressive generation for any model with `forward_batch`, `new_cache` and a `config`.

Prefill runs the whole prompt in one batched pass; decode then feeds one token at a time through the
KV cache. Sampling (repetition penalty, temperature, top-k, min-p, top-p) runs in the C engine on
the logits row; the random draw comes from a seeded `random.Random`, so the same seed gives the same
tokens on any thread count. Stop strings are matched on the decoded text; text that might still
become a stop string is held back from the stream until it is decided.
"""
import random
from dataclasses import dataclass, field
from typing import Iterator, List, Optional

from toolkit import errors

from ..core.engine import functional as F
from ..core.engine import profile


@dataclass
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 0.0          # 0 = greedy
    top_k: int = 0                    # 0 = off
    top_p: float = 1.0                # 1 = off
    min_p: float = 0.0                # 0 = off
    repetition_penalty: float = 1.0   # 1 = off
    seed: Optional[int] = None
    stop: List[str] = field(default_factory=list)
    stop_at_eos: bool = True

    def __post_init__(self):
        def num(name, lo, hi=None, integer=False):
            v = getattr(self, name)
            ok_type = isinstance(v, int) if integer else isinstance(v, (int, float))
            if isinstance(v, bool) or not ok_type:
                raise errors.ArgumentTypeError(f"{name} must be {'an int' if integer else 'a number'}, got {v!r}")
            if v < lo or (hi is not None and v > hi) or v != v:
                raise errors.InvalidArgumentError(f"{name} must be in [{lo}, {hi if hi is not None else 'inf'}], got {v!r}")

        num("max_new_tokens", 0, integer=True)
        num("temperature", 0.0)
        num("top_k", 0, integer=True)
        num("top_p", 0.0, 1.0)
        if self.top_p == 0:
            raise errors.InvalidArgumentError("top_p must be in (0, 1]")
        num("min_p", 0.0, 1.0)
        num("repetition_penalty", 0.0)
        if self.repetition_penalty == 0:
            raise errors.InvalidArgumentError("repetition_penalty must be positive")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise errors.ArgumentTypeError(f"seed must be an int or None, got {self.seed!r}")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if not isinstance(self.stop, (list, tuple)) or not all(isinstance(s, str) and s for s in self.stop):
            raise errors.ArgumentTypeError("stop must be a list of non-empty strings")
        self.stop = list(self.stop)

    @classmethod
    def from_kwargs(cls, defaults=None, **kwargs):
        merged = dict(defaults or {})
        merged.update(kwargs)
        unknown = set(merged) - set(cls.__dataclass_fields__)
        if unknown:
            raise errors.ArgumentTypeError(f"unknown generation settings: {', '.join(sorted(unknown))}")
        return cls(**merged)


def eos_ids(model):
    ids = set(model.config.eos_token_id or [])
    tok = getattr(model, "tokenizer", None)
    if tok is not None:
        ids |= set(getattr(tok, "eos_ids", ()) or ())
    return ids


class Sampler:
    """Picks the next token of one sequence from its logits row and tracks its stop conditions."""

    def __init__(self, params: SamplingParams, prompt_ids, eos_ids):
        self.params = params
        self.rng = random.Random(params.seed)
        self.eos = set(eos_ids) if params.stop_at_eos else set()
        self.history = list(prompt_ids)
        self.generated = []
        self.done = params.max_new_tokens == 0

    def next(self, row):
        """The next token id from logits row [vocab] (modified in place by the penalty), or None at EOS."""
        p = self.params
        if p.repetition_penalty != 1.0:
            F.repetition_penalty_(row, self.history, p.repetition_penalty)
        r = self.rng.random() if p.temperature > 0 else 0.0
        tok = F.sample(row, p.temperature, p.top_k, p.top_p, p.min_p, r)
        if tok in self.eos:
            self.done = True
            return None
        self.history.append(tok)
        self.generated.append(tok)
        if len(self.generated) >= p.max_new_tokens:
            self.done = True
        return tok


def check_request(model, prompt_ids, params: SamplingParams):
    if not prompt_ids:
        raise errors.InvalidArgumentError("the prompt is empty: give at least one token")
    ctx = model.config.max_position_embeddings
    need = len(prompt_ids) + params.max_new_tokens
    if need > ctx:
        raise errors.ContextLengthError(
            f"prompt ({len(prompt_ids)} tokens) + max_new_tokens ({params.max_new_tokens}) = {need} "
            f"exceeds the context length {ctx}")
    return need


def generate_ids(model, prompt_ids, params: SamplingParams, cache=None, stats=None, hooks=None) -> Iterator[int]:
    """Yields new token ids one by one (EOS excluded when stop_at_eos) until a stop condition.

    Stop strings are not handled here (they need text); see `stream_text`. If `stats` is a dict it
    receives prefill_tokens/prefill_seconds and decode_tokens/decode_seconds (forward passes only).
    hooks, a list of (name, fn), apply to this sequence in prefill and every decode step.
    """
    seq_hooks = [hooks] if hooks else None
    need = check_request(model, prompt_ids, params)
    if params.max_new_tokens == 0:
        return
    if cache is None:
        cache = model.new_cache(need)
    elif cache.free < need:
        raise errors.ContextLengthError(f"the KV cache has {cache.free} free slots; {need} are needed")
    sampler = Sampler(params, prompt_ids, eos_ids(model))
    if stats is None:
        stats = {}
    with profile.step("prefill", len(prompt_ids)) as st:   # the profiler's clock: one source of timing
        logits = model.forward_batch([(list(prompt_ids), cache)], logits="last", seq_hooks=seq_hooks)  # [1, vocab]
    stats.update(prefill_tokens=len(prompt_ids), prefill_seconds=st.seconds, decode_tokens=0, decode_seconds=0.0)
    while True:
        tok = sampler.next(logits)  # [1, vocab]: the sampler reads it as one row
        if tok is None:
            return
        yield tok
        if sampler.done:
            return
        with profile.step("decode", 1) as st:
            logits = model.forward_batch([([tok], cache)], logits="last", seq_hooks=seq_hooks)
        stats["decode_seconds"] += st.seconds
        stats["decode_tokens"] += 1


class StopMatcher:
    """Feeds decoded text in; gives back the part that is safe to emit and whether a stop string hit.

    Text that could be the start of a stop string is held back until more text decides it.
    """

    def __init__(self, stops):
        self.stops = list(stops)
        self.text = ""
        self.emitted = 0
        self.stopped = False

    def feed(self, piece):
        self.text += piece
        if not self.stops:
            out, self.emitted = self.text[self.emitted:], len(self.text)
            return out
        longest = max(len(s) for s in self.stops)
        search_from = max(0, self.emitted - longest + 1)
        hits = [i for i in (self.text.find(s, search_from) for s in self.stops) if i >= 0]
        if hits:
            cut = min(hits)
            out = self.text[self.emitted:cut]
            self.emitted = cut
            self.stopped = True
            return out
        safe = len(self.text)
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.text)), 0, -1):
                if self.text.endswith(s[:k]):
                    safe = min(safe, len(self.text) - k)
                    break
        safe = max(safe, self.emitted)
        out, self.emitted = self.text[self.emitted:safe], safe
        return out

    def finish(self):
        if self.stopped:
            return ""
        out, self.emitted = self.text[self.emitted:], len(self.text)
        return out


def stream_text(model, tokenizer, prompt_ids, params: SamplingParams, ids_out=None, stats=None,
                hooks=None) -> Iterator[str]:
    """Yields text pieces as tokens are generated; never splits a UTF-8 character; stops at stop strings.

    If ids_out is a list, the generated ids are appended to it (up to and including the token that
    completed a stop string).
    """
    decoder = tokenizer.stream(skip_special_tokens=False)
    matcher = StopMatcher(params.stop)
    for tok in generate_ids(model, prompt_ids, params, stats=stats, hooks=hooks):
        if ids_out is not None:
            ids_out.append(tok)
        piece = matcher.feed(decoder.step(tok))
        if piece:
            yield piece
        if matcher.stopped:
            return
    tail = matcher.feed(decoder.flush())
    if tail:
        yield tail
    if not matcher.stopped:
        tail = matcher.finish()
        if tail:
            yield tail
