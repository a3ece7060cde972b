"""Activation patching: which activations carry the difference between a clean and a corrupted
prompt. For each layer and position, the corrupted run gets the clean run's activation at one hook
point and position; the effect is metric(patched logits) - metric(corrupted logits)."""
from toolkit import errors

from ..common import validate

from .cache import run_with_cache, run_with_hooks, token_ids
from .registry import module_of


def logit_diff_metric(model, answer, wrong):
    """metric(logits) = logit of `answer` - logit of `wrong` at the last position (ids or
    single-token strings)."""
    a, b = _token(model, answer), _token(model, wrong)

    def metric(logits):
        row = logits[logits.shape[0] - 1]
        return row[a] - row[b]
    return metric


def _token(model, t):
    if isinstance(t, str):
        ids = token_ids(model, t)
        if len(ids) != 1:
            raise errors.InvalidArgumentError(f"{t!r} is {len(ids)} tokens; give one token (or its id)")
        return ids[0]
    V = module_of(model).config.vocab_size
    t = validate.int_like(t)
    if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < V:
        raise errors.InvalidArgumentError(f"a token is a string or an id in 0..{V - 1}, got {t!r}")
    return t


class PatchingResult:
    """effects[layer][pos] (rows follow `layers`, columns `positions`), with the baselines."""

    def __init__(self, hook, layers, positions, effects, clean_metric, corrupted_metric, tokens):
        self.hook, self.layers, self.positions, self.effects = hook, layers, positions, effects
        self.clean_metric, self.corrupted_metric, self.tokens = clean_metric, corrupted_metric, tokens

    def max_abs(self):
        return max((abs(v) for row in self.effects for v in row), default=0.0)

    def __repr__(self):
        return (f"PatchingResult({self.hook}: {len(self.layers)} layers x {len(self.positions)} positions, "
                f"clean {self.clean_metric:.4g}, corrupted {self.corrupted_metric:.4g}, max |effect| "
                f"{self.max_abs():.4g})")


def activation_patching(model, clean, corrupted, hook="resid_pre", metric=None, answer=None, wrong=None,
                        layers=None, positions=None):
    """Patches the clean run's `hook` activation (short name such as "resid_pre", "attn_out",
    "mlp_out", "resid_mid", "resid_post", "z") into the corrupted run, one (layer, position) at a
    time. metric(logits [pos, vocab]) -> float; default: logit difference of answer vs wrong at
    the last position. Clean and corrupted must have the same number of tokens."""
    lm = module_of(model)
    L = lm.config.num_hidden_layers
    clean_ids, bad_ids = token_ids(model, clean), token_ids(model, corrupted)
    if len(clean_ids) != len(bad_ids):
        raise errors.InvalidArgumentError(f"clean ({len(clean_ids)} tokens) and corrupted ({len(bad_ids)} tokens) "
                                          f"prompts must have the same length")
    rows = "all"
    if metric is None:
        if answer is None or wrong is None:
            raise errors.InvalidArgumentError("give a metric, or answer and wrong tokens for the logit difference")
        metric = logit_diff_metric(model, answer, wrong)
        rows = "last"  # the default metric reads the last position only: skip the other rows' unembedding
    elif not callable(metric):
        raise errors.ArgumentTypeError(f"metric must be callable as metric(logits), got {type(metric).__name__}")
    if not isinstance(hook, str):
        raise errors.ArgumentTypeError(f"hook is a short hook name such as 'resid_pre', got {hook!r:.40}")
    sub, _, short = hook.rpartition(".")  # "z", "hook_z", or with its sublayer: "ln1.normalized"
    short = short.removeprefix("hook_")
    subs = [sub] if sub else ["", "attn", "mlp", "ln1", "ln2"]
    found = [f"blocks.{{}}.{s + '.' if s else ''}hook_{short}" for s in subs]
    found = [n for n in found if n.format(0) in lm.hook_set.points]
    if len(found) > 1:
        options = ", ".join(repr(n.split(".", 2)[2].replace("hook_", "")) for n in found)
        raise errors.InvalidArgumentError(f"{hook!r} is in several sublayers: give one of {options}")
    if not found or short in ("pattern", "attn_scores"):
        raise errors.InvalidArgumentError(f"cannot patch {hook!r} by position: use a hook with a leading "
                                          f"position dim (resid_pre, attn_out, mlp_out, z, ln1.normalized, ...)")
    template = found[0]
    layers = list(range(L)) if layers is None else _indices(layers, L, "layer")
    T = len(clean_ids)
    positions = list(range(T)) if positions is None else _indices(positions, T, "position")
    names = [template.format(layer) for layer in layers]
    clean_logits, cache = run_with_cache(model, clean_ids, names_filter=names)
    base = _number(metric(run_with_hooks(model, bad_ids, logits=rows)))
    effects = []
    for layer, name in zip(layers, names):
        src = cache[name]
        row = []
        for p in positions:
            def patch(t, hook, p=p, src=src):
                t[p].copy_(src[p])
            row.append(_number(metric(run_with_hooks(model, bad_ids, [(name, patch)], logits=rows))) - base)
        effects.append(row)
    return PatchingResult(hook, layers, positions, effects, _number(metric(clean_logits)), base, bad_ids)


def _indices(values, n, what):
    """Layers or positions as indices in 0..n-1 (negative ones count from the end, as in Python);
    one out of range raises rather than wrapping onto another layer."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise errors.ArgumentTypeError(f"{what}s must be a list of ints, got {values!r:.40}")
    out = []
    for v in values:
        i = validate.as_index(v)  # ints, and NumPy's integers
        if i is None:
            raise errors.ArgumentTypeError(f"a {what} is an int, got {v!r:.40}")
        if not -n <= i < n:
            raise errors.IndexOutOfRangeError(f"{what} {i} out of range for {n} {what}s")
        out.append(i % n)
    return out


def _number(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        raise errors.ArgumentTypeError(f"metric(logits) must return a number, got {v!r:.40}") from None
