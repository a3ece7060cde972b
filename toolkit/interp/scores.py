"""Head scores over repeated sequences: which heads do induction (TransformerLens's induction score)."""
from toolkit import errors

from ..common import validate

from ..core.engine import functional as F
from ..core.engine.tensor import Tensor
from .cache import run_with_cache, token_ids
from .registry import module_of


def induction_scores(model, sequences, period, start=0):
    """[layer][head]: each head's mean attention from token i of the repeat to token i - period + 1
    (the token that followed i's earlier occurrence), over the repeat's period tokens and over the
    sequences. Each sequence is `start` tokens (e.g. BOS) and then a block of `period` tokens
    repeated at least once. One forward pass per sequence, caching only the attention patterns;
    the means are one engine matmul per layer against a [T * T] weight row."""
    period = validate.int_like(period)
    start = validate.int_like(start)
    if isinstance(period, bool) or not isinstance(period, int) or period < 2:
        raise errors.InvalidArgumentError(f"period must be an int >= 2, got {period!r}")
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise errors.InvalidArgumentError(f"start must be an int >= 0, got {start!r}")
    if isinstance(sequences, (str, bytes)) or not hasattr(sequences, "__iter__"):
        raise errors.ArgumentTypeError(f"sequences must be a list of texts or token-id lists, got {sequences!r:.40}")
    sequences = [token_ids(model, s) for s in sequences]  # text is tokenized as in run_with_cache
    if not sequences:
        raise errors.InvalidArgumentError("induction_scores needs at least one sequence")
    c = module_of(model).config
    L, H = c.num_hidden_layers, c.num_attention_heads
    totals = [[0.0] * H for _ in range(L)]
    weights = {}  # by sequence length: 1 / period at (i, i - period + 1) for each query i of the repeat
    for ids in sequences:
        T = len(ids)
        if T < start + 2 * period:
            raise errors.InvalidArgumentError(
                f"a sequence of {T} tokens cannot hold {start} + 2 x {period} (a block and its repeat)")
        w = weights.get(T)
        if w is None:
            row = [0.0] * (T * T)
            for i in range(start + period, start + 2 * period):
                row[i * T + i - period + 1] = 1.0 / period
            w = weights[T] = Tensor.from_list(row, (1, T * T))
        _, cache = run_with_cache(model, ids, names_filter=lambda n: n.endswith("attn.hook_pattern"))
        for layer in range(L):
            pattern = cache[f"blocks.{layer}.attn.hook_pattern"]                  # [H, T, T]
            means = F.matmul(pattern.contiguous().reshape(H, T * T), w).to_list()   # [H, 1], flat
            for h in range(H):
                totals[layer][h] += means[h] / len(sequences)
    return totals
