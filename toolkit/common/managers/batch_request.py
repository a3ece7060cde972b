"""One request of the BatchManager: its checked inputs, its progress, and what it hands back.

The checks live here so `add_request` can refuse a malformed request before it touches the
scheduler: a bad id or token found in the middle of a batched pass would sink every request in it.
"""
from dataclasses import dataclass
from typing import Any, List, Optional

from toolkit import errors

from ...core.engine.backend import Tensor
from .. import validate
from ..generation import Sampler, StopMatcher

# States a request passes through; the last two are final.
QUEUED, PREFILL, DECODE, FINISHED, CANCELLED = "queued", "prefill", "decode", "finished", "cancelled"


def check_request_id(rid):
    return validate.request_id(rid)


def check_token_ids(rid, token_ids, vocab_size):
    """The prompt as a list of ints: ints or whole-number floats (as the guide's tokenize returns), or a Tensor."""
    return validate.token_ids(token_ids, vocab_size, f"request {rid!r}: token ids", allow_empty=False)


def check_hooks(rid, hooks):
    """None, or a list of (hook name, fn) pairs applied to this request's rows only."""
    if hooks is None:
        return None
    if not isinstance(hooks, (list, tuple)):
        raise errors.ArgumentTypeError(f"request {rid!r}: hooks must be a list of (name, fn) pairs")
    out = []
    for h in hooks:
        if not (isinstance(h, (tuple, list)) and len(h) == 2 and callable(h[1])):
            raise errors.ArgumentTypeError(f"request {rid!r}: each hook must be a (name, fn) pair, got {h!r}")
        out.append(tuple(h))
    return out or None


@dataclass(frozen=True)
class BatchToken:
    """One generated token of a request's stream: its id and the text it made final ('' while a
    character or a possible stop string is incomplete). Text still held back when the request ends
    comes last with token_id None."""
    token_id: Optional[int]
    text: str


@dataclass(frozen=True)
class RequestStatus:
    state: str                  # queued | prefill | decode | finished | cancelled
    prompt_tokens: int
    prefilled_tokens: int       # prompt tokens already in the KV cache
    generated_tokens: int
    kv_tokens: int              # KV slots reserved for it now (0 once finished or cancelled)
    finish_reason: Optional[str]  # eos | length | stop | cancelled | error, None while it runs


@dataclass
class BatchResult:
    """What a request produced. `token_ids` run up to and including the token that completed a
    stop string; `text` (None without a tokenizer) is cut before the stop string, exactly as
    `generate` returns it."""
    request_id: Any
    token_ids: List[int]
    text: Optional[str]
    finish_reason: str
    prompt_tokens: int
    logits: Optional[List[Tensor]] = None  # with keep_logits: the [vocab] row each token was drawn from
    error: Optional[BaseException] = None  # why it ended, when finish_reason is "error"

    def to_list(self):
        """The generated ids, as `to_list()` of the Tensor `step()` returns."""
        return list(self.token_ids)

    def tensor(self):
        t = Tensor((len(self.token_ids),), "I32")
        return t.load(self.token_ids) if self.token_ids else t


class Request:
    """Mutable state of one request; the manager changes it only under its lock."""

    def __init__(self, rid, prompt, params, eos, tokenizer, hooks, keep_logits):
        self.rid, self.prompt, self.params, self.hooks = rid, prompt, params, hooks
        self.sampler = Sampler(params, prompt, eos)
        self.decoder = tokenizer.stream(skip_special_tokens=False) if tokenizer is not None else None
        self.matcher = StopMatcher(params.stop)
        self.text_parts = [] if tokenizer is not None else None
        self.logits = [] if keep_logits else None
        self.events = []            # BatchToken per generated token, read by streams
        self.state = QUEUED
        self.finish_reason = None
        self.cache = None
        self.kv_tokens = 0          # slots reserved against the budget
        self.prefilled = 0
        self.in_flight = False      # its cache is being written by the pass now running
        self.result = None
        self.error = None

    @property
    def need(self):
        """KV slots this request can ever fill: prompt plus every new token."""
        return len(self.prompt) + self.params.max_new_tokens

    @property
    def done(self):
        return self.state in (FINISHED, CANCELLED)

    def feed(self, budget):
        """The tokens the next pass runs for it: a prompt chunk of at most `budget` tokens, or the
        last token drawn."""
        if self.prefilled < len(self.prompt):
            return self.prompt[self.prefilled:self.prefilled + budget]
        return [self.sampler.generated[-1]]

    def accept(self, tok):
        """Records a drawn token (None = EOS); returns why the request is now done (eos, stop,
        length), or None while it goes on."""
        if tok is None:
            return "eos"
        piece = ""
        if self.decoder is not None:
            piece = self.matcher.feed(self.decoder.step(tok))
            self.text_parts.append(piece)
        self.events.append(BatchToken(tok, piece))
        if self.matcher.stopped:
            return "stop"
        if self.sampler.done:
            return "length"
        return None

    def close_text(self):
        """Releases text held back for a possible stop string once nothing more can come."""
        if self.decoder is None or self.matcher.stopped:
            return
        tail = self.matcher.feed(self.decoder.flush())
        if not self.matcher.stopped:
            tail += self.matcher.finish()
        if tail:
            self.text_parts.append(tail)
            self.events.append(BatchToken(None, tail))

    def status(self):
        return RequestStatus(self.state, len(self.prompt), self.prefilled, len(self.sampler.generated),
                             self.kv_tokens, self.finish_reason)

    def make_result(self):
        text = "".join(self.text_parts) if self.text_parts is not None else None
        return BatchResult(self.rid, list(self.sampler.generated), text, self.finish_reason, len(self.prompt),
                           self.logits, self.error)
