"""KV memory accounting for the BatchManager: a budget in tokens or bytes, what is reserved, the peak.

A request reserves the slots it can ever fill (prompt + max_new_tokens) when it is admitted, and its
cache is allocated at exactly that size, so what is reserved is what is allocated: the budget holds
whatever the requests do, and nothing is ever evicted mid-generation.
"""
from dataclasses import dataclass
from typing import Optional

from toolkit import errors


def kv_bytes_per_token(config):
    """Bytes one token takes in a KVCache: keys and values of every layer."""
    elem = {"F32": 4, "F16": 2}.get(getattr(config, "kv_cache_dtype", "F32"), 4)
    # a plugin's own config may know nothing of grouped-query attention: then every head has its keys
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * elem


def _positive_int(name, v):
    if isinstance(v, bool) or not isinstance(v, int):
        raise errors.ArgumentTypeError(f"{name} must be an int or None, got {v!r}")
    if v < 1:
        raise errors.InvalidArgumentError(f"{name} must be positive, got {v}")
    return v


@dataclass(frozen=True)
class KVUsage:
    tokens: int                    # KV slots reserved (= allocated) by running requests now
    bytes: int
    peak_tokens: int               # the most ever reserved at once
    peak_bytes: int
    budget_tokens: Optional[int]   # None: no budget
    budget_bytes: Optional[int]


class KVBudget:
    """Counts reserved KV slots against an optional budget. Not thread-safe: the manager's lock guards it."""

    def __init__(self, config, budget_tokens=None, budget_bytes=None):
        self.per_token = kv_bytes_per_token(config)
        if budget_tokens is not None and budget_bytes is not None:
            raise errors.InvalidArgumentError("give the KV budget in tokens or in bytes, not both")
        if budget_bytes is not None:
            budget_tokens = _positive_int("kv_budget_bytes", budget_bytes) // self.per_token
            if budget_tokens < 1:
                raise errors.InvalidArgumentError(
                    f"kv_budget_bytes={budget_bytes} holds no token: one takes {self.per_token} bytes")
        elif budget_tokens is not None:
            _positive_int("kv_budget_tokens", budget_tokens)
        self.budget = budget_tokens
        self.used = 0
        self.peak = 0

    def check_fits(self, rid, need):
        """Refuses a request that could not run even with the whole budget to itself."""
        if self.budget is not None and need > self.budget:
            raise errors.InvalidArgumentError(
                f"request {rid!r} needs {need} KV slots ({need * self.per_token / 2**20:.1f} MiB: prompt + "
                f"max_new_tokens) but the KV budget is {self.budget} slots "
                f"({self.budget * self.per_token / 2**20:.1f} MiB); it can never run")

    def can_reserve(self, need):
        return self.budget is None or self.used + need <= self.budget

    def reserve(self, need):
        self.used += need
        self.peak = max(self.peak, self.used)

    def release(self, n):
        self.used -= n

    def usage(self):
        b = self.budget
        return KVUsage(self.used, self.used * self.per_token, self.peak, self.peak * self.per_token, b,
                       None if b is None else b * self.per_token)
