"""Autoregressive generation for any model with `forward_batch`, `new_cache` and a `config`.

Prefill runs the whole prompt in one batched pass; decode then feeds one token at a time through the
KV cache. Sampling (repetition penalty, temperature, top-k, min-p, top-p) runs in the C engine on
the logits row; the random draw comes from a seeded `random.Random`, so the same seed gives the same
tokens on any thread count. Stop strings are matched on the decoded text; text that might still
become a stop string is held back from the stream until it is decided.
"""
import math
import random
from dataclasses import dataclass, field
from typing import Iterator, List, Optional

from toolkit import errors

from ..core.engine import functional as F
from ..core.engine import profile
from . import validate


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
        def num(name, lo, hi=None, integer=False, lo_open=False):
            setattr(self, name, validate.number(name, getattr(self, name), lo, hi, integer=integer, lo_open=lo_open))

        num("max_new_tokens", 0, integer=True)
        num("temperature", 0.0)
        num("top_k", 0, integer=True)
        num("top_p", 0.0, 1.0, lo_open=True)  # 1 = off; 0 would keep no token
        num("min_p", 0.0, 1.0)
        num("repetition_penalty", 0.0, lo_open=True)  # 1 = off
        if self.seed is not None:
            if validate.as_index(self.seed) is None:
                raise errors.ArgumentTypeError(f"seed must be an int or None, got {self.seed!r}")
            self.seed = validate.as_index(self.seed)  # random.Random takes ints, not NumPy's int64
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
        self.last = None  # the last sampled id, EOS included

    def next(self, row):
        """The next token id from logits row [vocab] (modified in place by the penalty), or None at EOS."""
        p = self.params
        if p.repetition_penalty != 1.0:
            F.repetition_penalty_(row, self.history, p.repetition_penalty)
        r = self.rng.random() if p.temperature > 0 else 0.0
        tok = F.sample(row, p.temperature, p.top_k, p.top_p, p.min_p, r)
        self.last = tok
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


@dataclass
class TokenEvent:
    """One generation step: the sampled token, how likely the model found it, and what it cost.

    prob / logprob / top are the model's own distribution (softmax of the raw logits, before the
    repetition penalty, temperature and truncation reshape it for sampling), as OpenAI-style
    logprobs report it; top lists the most likely (token_id, text, prob), most likely first.
    seconds is this step's wall time: the forward pass that produced the logits plus sampling
    (for the first token that forward pass is the prefill over n_input prompt tokens).
    text is the stream piece this step releases: joined over a generation it is exactly the text
    `stream(details=False)` yields (stop strings cut, incomplete characters held back), so it can
    be "" for a token and hold a previous token's held-back text. eos marks the end-of-turn token
    that stopped generation (not part of the generated ids; its text is any held-back tail).
    """
    token_id: int
    text: str
    prob: float
    logprob: float
    top: list
    seconds: float
    phase: str            # "prefill" (first token, from the prompt pass) or "decode"
    index: int = 0        # 0-based among this generation's tokens
    n_input: int = 1      # tokens through the forward pass that produced this token's logits
    eos: bool = False

    def __str__(self):
        return self.text


def _distribution(tokenizer, row, top):
    """(probs [1, vocab], the likeliest id, its prob, the `top` (id, text, prob)) of logits row
    [1, vocab], through engine ops (a softmax and a top-k).

    The caller takes a token's log-probability as logit - max_logit + log(p_max) = logit - log Z:
    exact to float precision even where the probability itself underflows to 0.
    """
    probs = F.softmax(row)                                    # [1, vocab]
    values, indices = F.topk(probs, max(top, 1))              # [1, k] each
    vals, idx = values.to_list(), indices.to_list()
    alts = [(i, tokenizer.decode([i]) if tokenizer is not None else "", p) for i, p in zip(idx[:top], vals[:top])]
    return probs, idx[0], vals[0], alts


def generate_events(model, prompt_ids, params: SamplingParams, cache=None, top=0, probs=True,
                    tokenizer=None, hooks=None) -> Iterator[TokenEvent]:
    """Yields a TokenEvent (text "") per sampled token until a stop condition; stop strings are
    not handled here (they need text; see `stream_text`). With stop_at_eos, the EOS token that
    ends generation comes last as an event with eos=True. probs=False skips the probability work
    (prob/logprob are nan, top empty) for callers that only want ids and timings. hooks, a list of
    (name, fn), apply to this sequence in prefill and every decode step."""
    if isinstance(top, bool) or not isinstance(top, int):
        raise errors.ArgumentTypeError(f"top must be an int, got {top!r}")
    if not 0 <= top <= model.config.vocab_size:
        raise errors.InvalidArgumentError(f"top must be in [0, {model.config.vocab_size}], got {top}")
    need = check_request(model, prompt_ids, params)
    if params.max_new_tokens == 0:
        return
    if cache is None:
        cache = model.new_cache(need)
    elif cache.free < need:
        raise errors.ContextLengthError(f"the KV cache has {cache.free} free slots; {need} are needed")
    if tokenizer is None:
        tokenizer = getattr(model, "tokenizer", None)
    sampler = Sampler(params, prompt_ids, eos_ids(model))
    seq_hooks = [hooks] if hooks else None
    feed, phase, index = list(prompt_ids), "prefill", 0
    while True:
        with profile.step(phase, len(feed)) as st:   # the profiler's clock: one source of timing
            logits = model.forward_batch([(feed, cache)], logits="last", seq_hooks=seq_hooks)   # [1, vocab]
            if probs:
                # before the sampler: the repetition penalty rewrites the row in place
                p_all, best, p_best, alts = _distribution(tokenizer, logits, top)
            # [1, vocab]: the sampler reads it as one row; its repetition penalty edits the row in
            # place, so it gets a copy when the raw row is still needed for the logprob
            tok = sampler.next(logits.clone() if probs and params.repetition_penalty != 1.0 else logits)
        eos = tok is None
        if eos:
            tok = sampler.last
        if probs:
            row = logits[0]
            logprob = row[tok] - row[best] + math.log(p_best)
            prob = p_all[0][tok]
        else:
            prob = logprob = math.nan
            alts = []
        yield TokenEvent(tok, "", prob, logprob, alts, st.seconds, phase, index, len(feed), eos)
        if eos or sampler.done:
            return
        feed, phase, index = [tok], "decode", index + 1


def generate_ids(model, prompt_ids, params: SamplingParams, cache=None, hooks=None) -> Iterator[int]:
    """Yields new token ids one by one (EOS excluded when stop_at_eos) until a stop condition."""
    for ev in generate_events(model, prompt_ids, params, cache=cache, probs=False, hooks=hooks):
        if not ev.eos:
            yield ev.token_id


def summary_line(events):
    """prefill / decode speed of a generation's TokenEvents, the line the CLI and %%tk_generate print.

    Prefill is the pass over the prompt (it yields the first token); decode counts every later
    one-token pass, the one that produced an EOS included."""
    pre = [e for e in events if e.phase == "prefill"]
    dec = [e for e in events if e.phase == "decode"]
    pt, ps = sum(e.n_input for e in pre), sum(e.seconds for e in pre)
    dt, ds = len(dec), sum(e.seconds for e in dec)
    new = sum(1 for e in events if not e.eos)
    return (f"[prefill] {pt} tokens in {ps * 1e3:.1f} ms = {pt / ps if ps else 0:.1f} tok/s | "
            f"[decode] {dt} tokens in {ds * 1e3:.1f} ms = {dt / ds if ds else 0:.1f} tok/s | "
            f"{new} new tokens")


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


def stream_text(model, tokenizer, prompt_ids, params: SamplingParams, details=False, top=5, probs=True,
                hooks=None) -> Iterator:
    """Yields text pieces as tokens are generated; never splits a UTF-8 character; stops at stop strings.

    details=True yields a TokenEvent per token instead (with `top` alternatives), its text the
    piece that token releases; the ids run up to and including the token that completed a stop
    string, and an EOS that ended generation comes last with eos=True. probs=False leaves out the
    probabilities (nan, no alternatives) where only ids and timings are wanted (~0.5 ms a token).
    """
    decoder = tokenizer.stream(skip_special_tokens=False)
    matcher = StopMatcher(params.stop)
    held = None  # the final event waits for the text the decoder and the stop matcher still hold
    for ev in generate_events(model, prompt_ids, params, top=top, probs=details and probs,
                              tokenizer=tokenizer, hooks=hooks):
        if ev.eos:
            held = ev
            continue
        piece = matcher.feed(decoder.step(ev.token_id))
        if not details:
            if piece:
                yield piece
        else:
            ev.text = piece
            if matcher.stopped or ev.index + 1 < params.max_new_tokens:
                yield ev
            else:
                held = ev
        if matcher.stopped:
            return
    tail = matcher.feed(decoder.flush())
    if not matcher.stopped:
        tail += matcher.finish()
    if details:
        if held is not None:
            held.text += tail
            yield held
    elif tail:
        yield tail
