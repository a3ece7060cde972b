"""The hook registry on a model: add and remove hooks by name, glob, list or predicate, for good or
for the length of a `with` block (TransformerLens's `hooks()` / `add_hook` / `reset_hooks`).

Functions here take the LlamaModel module, or a `toolkit.Model` (whose `.model` it is).
"""
from contextlib import contextmanager

from toolkit import errors

from ..models.hook_points import ReadOnly


def module_of(model):
    """The model module (the object with the hook points) of a toolkit.Model or of the module itself."""
    if hasattr(model, "hook_set"):
        return model
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "hook_set"):
        return inner
    raise errors.ArgumentTypeError(f"expected a toolkit.Model or a model module with hook points, got "
                                   f"{type(model).__name__}")


def hook_names(model):
    return module_of(model).hook_names()


def resolve(model, name_filter):
    """The hook names a filter selects (a name, a glob like "blocks.*.hook_resid_post", a list of
    names, or a predicate name -> bool), in forward order. Unknown names raise with suggestions."""
    return module_of(model).hook_set.resolve(name_filter)


def _pairs(fwd_hooks):
    if fwd_hooks is None:
        return []
    if not isinstance(fwd_hooks, (list, tuple)):
        raise errors.ArgumentTypeError(f"fwd_hooks must be a list of (name or filter, fn) pairs, got "
                                       f"{type(fwd_hooks).__name__}")
    out = []
    for item in fwd_hooks:
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise errors.ArgumentTypeError(f"fwd_hooks entries are (name or filter, fn) pairs, got {item!r:.80}")
        name_filter, fn = item
        if not callable(fn):
            raise errors.ArgumentTypeError(f"a hook must be callable as fn(tensor, hook), got {type(fn).__name__}")
        out.append((name_filter, fn))
    return out


def expand(model, fwd_hooks):
    """[(name, fn)] for every hook point each (filter, fn) pair selects; raises before anything is
    registered if one filter is bad."""
    hs = module_of(model).hook_set
    return [(n, fn) for name_filter, fn in _pairs(fwd_hooks) for n in hs.resolve(name_filter)]


def add_hooks(model, fwd_hooks):
    """Registers every (filter, fn) pair until removed; returns the handles (each has remove())."""
    hs = module_of(model).hook_set
    return [hs.add(n, fn) for n, fn in expand(model, fwd_hooks)]


def add_hook(model, name_filter, fn):
    return add_hooks(model, [(name_filter, fn)])


def remove_hooks(model, name_filter=None):
    """Removes every hook (name_filter=None) or those on the hook points a filter selects."""
    hs = module_of(model).hook_set
    hs.clear(None if name_filter is None else hs.resolve(name_filter))


reset_hooks = remove_hooks


@contextmanager
def hooks(model, fwd_hooks=(), clear_contexts=False):
    """`with hooks(m, fwd_hooks=[(name, fn)]):` the hooks apply inside the block and are gone after
    it, however it exits (an exception raised by a hook included). clear_contexts empties the
    hook.ctx dicts of the points used, on exit."""
    handles = add_hooks(model, fwd_hooks)
    try:
        yield model
    finally:
        for h in handles:
            h.remove()
        if clear_contexts:
            for h in handles:
                h._point.ctx.clear()


def read_only(fn):
    """Marks a hook that only reads: it is not copied back, and reading attention scores this way
    keeps the fused attention kernel (logits stay bit-identical)."""
    return ReadOnly(fn)
