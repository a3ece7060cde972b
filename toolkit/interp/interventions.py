"""Ready-made interventions, as fwd_hooks lists for `hooks`, `run_with_hooks` or `generate`:
zero- and mean-ablation of attention heads, and steering vectors added to the residual stream."""
from toolkit import errors

from ..core.engine import functional as F
from ..common import validate
from ..core.engine.tensor import Tensor
from .cache import run_with_cache
from .registry import module_of


def _heads(model, heads):
    c = module_of(model).config
    if isinstance(heads, tuple) and len(heads) == 2 and all(validate.as_index(v) is not None for v in heads):
        heads = [heads]
    if not isinstance(heads, (list, tuple)) and callable(getattr(heads, "tolist", None)):
        heads = heads.tolist()  # an [n, 2] array (np.argwhere over a [layer, head] score table)
    if isinstance(heads, (str, bytes)) or not hasattr(heads, "__iter__"):
        raise errors.ArgumentTypeError(f"heads are a list of (layer, head) pairs, got {heads!r:.40}")
    by_layer = {}
    for item in heads:
        if not isinstance(item, (list, tuple)) and callable(getattr(item, "tolist", None)):
            item = item.tolist()
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise errors.ArgumentTypeError(f"heads are (layer, head) pairs, got {item!r}")
        for v, n, what in ((item[0], c.num_hidden_layers, "layer"), (item[1], c.num_attention_heads, "head")):
            if validate.as_index(v) is None:
                raise errors.ArgumentTypeError(f"a {what} is an int, got {v!r}")
            if not 0 <= validate.as_index(v) < n:
                raise errors.IndexOutOfRangeError(f"{what} {v} out of range 0..{n - 1}")
        layer, head = validate.as_index(item[0]), validate.as_index(item[1])
        by_layer.setdefault(layer, []).append(head)
    return by_layer


def zero_ablate_heads(model, heads):
    """Hooks that zero the output (hook_z) of the given (layer, head) pairs before o_proj."""
    hooks = []
    for layer, hs in _heads(model, heads).items():
        def ablate(z, hook, hs=tuple(hs)):                                # z [pos, head, d_head]
            zh = z.permute(1, 0, 2)
            zeros = Tensor(zh.shape[1:])
            for h in hs:
                zh[h].copy_(zeros)
        hooks.append((f"blocks.{layer}.attn.hook_z", ablate))
    return hooks


def mean_ablate_heads(model, heads, reference):
    """Hooks that replace the given heads' hook_z at every position by its mean over the
    positions of a reference prompt (text, token ids, or an ActivationCache holding those hook_z)."""
    by_layer = _heads(model, heads)
    names = [f"blocks.{layer}.attn.hook_z" for layer in by_layer]
    if hasattr(reference, "keys") and hasattr(reference, "accumulated_resid"):
        cache = reference
    else:
        _, cache = run_with_cache(model, reference, names_filter=names)
    hooks = []
    for layer, hs in by_layer.items():
        z = cache[f"blocks.{layer}.attn.hook_z"]                          # [pos, head, d_head]
        T, _, D = z.shape
        ones = Tensor.from_list([1.0 / T] * T, (1, T))
        means = {}
        for h in hs:
            zt = Tensor((D, T)).copy_(z.permute(1, 2, 0)[h])              # [d_head, pos]
            means[h] = F.matmul(zt, ones).reshape(1, D)                   # mean over positions

        def ablate(z, hook, means=means):
            zh = z.permute(1, 0, 2)
            zeros = Tensor(zh.shape[1:])
            for h, m in means.items():
                zh[h].copy_(zeros)
                F.add(zh[h], m, out=zh[h])
        hooks.append((f"blocks.{layer}.attn.hook_z", ablate))
    return hooks


def steering_hooks(model, layer, vector, from_pos=0, scale=1.0, point="hook_resid_pre"):
    """A hook adding scale * vector [d_model] to the residual stream at `layer` (its hook_resid_pre
    by default, or "hook_resid_mid" / "hook_resid_post"), at absolute positions >= from_pos. Works
    in batched passes and in every decode step of a generation."""
    lm = module_of(model)
    c = lm.config
    L = c.num_hidden_layers
    layer = validate.int_like(layer)
    from_pos = validate.int_like(from_pos)
    if isinstance(layer, bool) or not isinstance(layer, int) or not -L <= layer < L:
        raise errors.IndexOutOfRangeError(f"layer must be an int in {-L}..{L - 1}, got {layer!r}")
    if point not in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post"):
        raise errors.InvalidArgumentError(f"point must be hook_resid_pre, hook_resid_mid or hook_resid_post, got {point!r}")
    if isinstance(from_pos, bool) or not isinstance(from_pos, int) or from_pos < 0:
        raise errors.InvalidArgumentError(f"from_pos must be an int >= 0, got {from_pos!r}")
    scale = validate.number("scale", scale)
    if isinstance(vector, Tensor):
        v = vector
    elif isinstance(vector, (str, bytes)) or not hasattr(vector, "__iter__"):
        raise errors.ArgumentTypeError(f"a steering vector is a Tensor or a list of {c.hidden_size} numbers, "
                                       f"got {vector!r:.40}")
    else:
        v = Tensor.from_list(list(vector))
    if v.numel != c.hidden_size:
        raise errors.ShapeError(f"a steering vector has d_model = {c.hidden_size} values, got shape {v.shape}")
    if not F.all_finite(v):  # one NaN would turn every later logit into NaN
        raise errors.InvalidArgumentError("the steering vector holds NaN or infinite values")
    v = F.scale(v.reshape(1, c.hidden_size).to("F32"), float(scale))

    def steer(x, hook):                                                    # x [pos, d_model]
        for sp in hook.ctx["spans"]:
            lo = max(0, from_pos - sp.pos0)
            if lo < sp.rows:
                rows = x[sp.row0 + lo:sp.row0 + sp.rows]
                F.add(rows, v, out=rows)
    return [(f"blocks.{layer % L}.{point}", steer)]
