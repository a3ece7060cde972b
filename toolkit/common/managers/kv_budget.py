"""KV memory accounting for the BatchManager: a budget in tokens or bytes, what is reserved, the peak.

A request reserves the slots it can ever fill (prompt + max_new_tokens) when it is admitted, and its
cache is allocated at exactly that size, so what is reserved is what is allocated: the budget holds
whatever the requests do, and nothing is ever evicted mid-generation.
"""
from dataclasses import dataclass
from typing import Optional

from toolkit import errors


def kv_bytes_per_token(model):
    """Bytes one token takes in the model's KV cache (keys and values of every layer), measured on a
    one-slot cache so any model with `new_cache` counts right; None if its caches report no nbytes."""
    nbytes = getattr(model.new_cache(1), "nbytes", None)
    return nbytes if isinstance(nbytes, int) and nbytes > 0 else None


def _positive_int(name, v):
    if isinstance(v, bool) or not isinstance(v, int):
        raise errors.ArgumentTypeError(f"{name} must be an int or None, got {v!r}")
    if v < 1:
        raise errors.InvalidArgumentError(f"{name} must be positive, got {v}")
    return v


@dataclass(frozen=True)
class KVUsage:
    tokens: int                    # KV slots reserved (= allocated) by running requests now
    bytes: Optional[int]           # None for a model whose caches report no nbytes
    peak_tokens: int               # the most ever reserved at once
    peak_bytes: Optional[int]
    budget_tokens: Optional[int]   # None: no budget
    budget_bytes: Optional[int]


class KVBudget:
    """Counts reserved KV slots against an optional budget. Not thread-safe: the manager's lock guards it."""

    def __init__(self, model, budget_tokens=None, budget_bytes=None):
        self.per_token = kv_bytes_per_token(model)
        if budget_tokens is not None and budget_bytes is not None:
            raise errors.InvalidArgumentError("give the KV budget in tokens or in bytes, not both")
        if budget_bytes is not None:
            if self.per_token is None:
                raise errors.UnsupportedError(f"{type(model).__name__}'s KV caches report no nbytes: give the "
                                              "budget in tokens (kv_budget_tokens)")
            budget_tokens = _positive_int("kv_budget_bytes", budget_bytes) // self.per_token
            if budget_tokens < 1:
                raise errors.InvalidArgumentError(
                    f"kv_budget_bytes={budget_bytes} holds no token: one takes {self.per_token} bytes")
        elif budget_tokens is not None:
            _positive_int("kv_budget_tokens", budget_tokens)
        self.budget = budget_tokens
        self.used = 0
        self.peak = 0

    def _mib(self, n):
        return f" ({n * self.per_token / 2**20:.1f} MiB)" if self.per_token else ""

    def check_fits(self, rid, need):
        """Refuses a request that could not run even with the whole budget to itself."""
        if self.budget is not None and need > self.budget:
            raise errors.InvalidArgumentError(
                f"request {rid!r} needs {need} KV slots{self._mib(need)} (prompt + max_new_tokens) but the KV "
                f"budget is {self.budget} slots{self._mib(self.budget)}; it can never run")

    def can_reserve(self, need):
        return self.budget is None or self.used + need <= self.budget

    def reserve(self, need):
        self.used += need
        self.peak = max(self.peak, self.used)

    def release(self, n):
        self.used -= n

    def usage(self):
        def nbytes(n):
            return None if n is None or self.per_token is None else n * self.per_token
        return KVUsage(self.used, nbytes(self.used), self.peak, nbytes(self.peak), self.budget, nbytes(self.budget))
