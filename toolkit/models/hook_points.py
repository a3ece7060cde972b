"""Hook points: the named places in a forward pass where user functions read or edit activations.

A model declares its hook points once (a table of names and shapes, see the Llama model); this
module holds what sits around them: `HookPoint` (the `hook` a hook function receives, as in
TransformerLens), the set of registered hooks with name lookup and suggestions, and `PassHooks`,
which a forward pass builds only when some hook is wanted, so a pass without hooks tests one
`None` per layer.

Hook functions are called `fn(tensor, hook)`. The tensor is a copy of the activation (the pass
reuses its buffers, so a hook may keep what it gets); what the hook leaves in it, or returns in its
place, flows on into the computation.
"""
import difflib
import fnmatch
import re
from collections import namedtuple

from toolkit import errors

from ..core.engine.tensor import Tensor

# Where one sequence's rows sit in a tensor a hook receives: rows row0 .. row0 + rows - 1 hold the
# tokens at absolute positions pos0 .. pos0 + rows - 1 of sequence `seq` (its index in the batch).
Span = namedtuple("Span", "seq row0 rows pos0")

_LAYER = re.compile(r"^blocks\.(\d+)\.(.+)$")


class UnknownHookError(errors.InvalidArgumentError, KeyError):
    """A hook name that the model does not have (the message lists the closest valid names)."""

    def __str__(self):  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class HookPoint:
    """One named hook point; hook functions receive it as `hook`.

    `hook.name` is its full name, `hook.layer()` its layer (None outside the blocks), and `hook.ctx`
    a dict that persists across calls (TransformerLens keeps hook state there too) into which each
    call also writes "spans" (a list of `Span`: which rows of the tensor belong to which sequence
    and which absolute positions they hold) and "seq" (the sequence the tensor belongs to, or None
    when it stacks the rows of several sequences).
    """

    __slots__ = ("name", "layer_index", "short", "ctx", "entries")

    def __init__(self, name):
        self.name = name
        m = _LAYER.match(name)
        self.layer_index = int(m.group(1)) if m else None
        self.short = m.group(2) if m else name
        self.ctx = {}
        self.entries = []

    def layer(self):
        return self.layer_index

    @property
    def seq(self):
        return self.ctx.get("seq")

    def __repr__(self):
        return f"<HookPoint {self.name}: {len(self.entries)} hook(s)>"


class ReadOnly:
    """Wraps a hook that only reads (caches, probes): its copy is not written back, and reading
    attention scores this way leaves the fused attention kernel in place."""

    __slots__ = ("fn",)

    def __init__(self, fn):
        if not callable(fn):
            raise errors.ArgumentTypeError(f"a hook must be callable as fn(tensor, hook), got {type(fn).__name__}")
        self.fn = fn

    def __call__(self, t, hook):
        return self.fn(t, hook)


def _unwrap(fn):
    """(callable, readonly) of a hook given by the user, or of a ReadOnly wrapper."""
    if isinstance(fn, ReadOnly):
        return fn.fn, True
    if not callable(fn):
        raise errors.ArgumentTypeError(f"a hook must be callable as fn(tensor, hook), got {type(fn).__name__}")
    return fn, False


class _Entry:
    __slots__ = ("fn", "readonly")

    def __init__(self, fn, readonly):
        self.fn, self.readonly = fn, readonly


class HookHandle:
    """Returned by `add`; `remove()` takes that one hook off (again: no-op)."""

    __slots__ = ("_set", "_point", "_entry")

    def __init__(self, hook_set, point, entry):
        self._set, self._point, self._entry = hook_set, point, entry

    @property
    def name(self):
        return self._point.name

    def remove(self):
        self._set._remove(self._point, self._entry)

    def __repr__(self):
        return f"<HookHandle {self._point.name}>"


class HookSet:
    """Every hook point of a model by name, and the hooks registered on them."""

    def __init__(self, names):
        self.names = list(names)
        self.points = {n: HookPoint(n) for n in self.names}
        self.active = {}  # name -> HookPoint, only points with hooks: a pass reads just these
        self.version = 0  # bumped by every change, so a pass can reuse the last pass's grouping

    # ---- names ----
    def point(self, name):
        p = self.points.get(name) if isinstance(name, str) else None
        if p is None:
            raise self.unknown(name)
        return p

    def unknown(self, name):
        if not isinstance(name, str):
            return errors.ArgumentTypeError(f"hook names are strings, got {type(name).__name__}")
        close = difflib.get_close_matches(name, self.names, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see hook_names()"
        return UnknownHookError(f"no hook point named {name!r}{hint}")

    def resolve(self, name_filter):
        """The hook names a filter selects, in forward order: a name, a glob ("blocks.*.hook_resid_post"),
        a list of names and globs, or a predicate name -> bool. An unknown name, or a filter selecting none,
        raises."""
        if isinstance(name_filter, str):
            if name_filter in self.points:
                return [name_filter]
            if any(ch in name_filter for ch in "*?["):
                out = [n for n in self.names if fnmatch.fnmatchcase(n, name_filter)]
                if not out:
                    raise UnknownHookError(f"no hook point matches {name_filter!r}; see hook_names()")
                return out
            raise self.unknown(name_filter)
        if isinstance(name_filter, (list, tuple, set, frozenset)):
            wanted = set()
            for n in name_filter:
                if not isinstance(n, str):
                    raise errors.ArgumentTypeError(f"hook names are strings, got {n!r}")
                wanted.update(self.resolve(n))
            return [n for n in self.names if n in wanted]
        if callable(name_filter):
            out = [n for n in self.names if name_filter(n)]
            if not out:
                raise UnknownHookError("the names filter selects no hook point; see hook_names()")
            return out
        raise errors.ArgumentTypeError(
            f"a hook filter is a name, a list of names or a function name -> bool, got {type(name_filter).__name__}")

    # ---- registration ----
    def add(self, name, fn):
        """Registers fn(tensor, hook) on one hook point (a `ReadOnly(fn)` promises not to edit)."""
        fn, readonly = _unwrap(fn)
        p = self.point(name)
        e = _Entry(fn, readonly)
        p.entries.append(e)
        self.active[p.name] = p
        self.version += 1
        return HookHandle(self, p, e)

    def _remove(self, p, e):
        if e in p.entries:
            p.entries.remove(e)
        if not p.entries:
            self.active.pop(p.name, None)
        self.version += 1

    def clear(self, names=None):
        """Removes every hook (names=None) or those on the given names."""
        for n in list(self.active) if names is None else names:
            p = self.point(n)
            p.entries.clear()
            self.active.pop(n, None)
        self.version += 1

    def counts(self):
        return {n: len(p.entries) for n, p in self.active.items()}


class _Hooks:
    """The hooks of one pass at one place (a layer, or the model outside the blocks), by short name."""

    __slots__ = ("p", "by_short")

    def __init__(self, p):
        self.p = p
        self.by_short = {}

    def __contains__(self, short):
        return short in self.by_short

    def fire(self, short, t, spans=None, detect=False):
        """Runs the hooks on `short` over t, the rows of every sequence stacked; returns whether a
        hook changed t (only computed with detect=True)."""
        entries = self.by_short.get(short)
        if not entries:
            return False
        return self.p.run(short, entries, t, spans or self.p.spans, detect)

    def fire_seq(self, short, t, b, pos0, detect=False):
        """Runs the hooks on `short` over t, which belongs to sequence b alone (attention scores or
        pattern: [head, q_pos, k_pos]); hooks of other sequences do not see it."""
        entries = self.by_short.get(short)
        if not entries:
            return False
        mine = [e for e in entries if e[2] is None or e[2] == b]
        if not mine:
            return False
        span = [Span(b, 0, t.shape[1], pos0)]
        # t is made for this call alone: hooks that only read can all have it, uncopied
        share = all(e[3] for e in mine)
        changed = False
        for fn, point, seq, readonly in mine:
            point.ctx["spans"] = span
            point.ctx["seq"] = b
            changed |= self.p.call(short, fn, point, readonly, t, detect, share)
        return changed


class PassHooks:
    """Every hook of one forward pass, grouped by layer: `layers[i]` is None for a layer without
    hooks. Built from the registered hooks and per-sequence hooks (seq_hooks of forward_batch).

    `layouts` maps a short name to (to_user, from_user): functions that give a hook its tensor in
    the documented layout and write the hook's edits back in the engine's (Q/K heads of GGUF weights).
    """

    __slots__ = ("layers", "top", "spans", "layouts")

    def __init__(self, hook_set, seq_hooks, spans, n_layers, layouts):
        self.layers = [None] * n_layers
        self.top = None
        self.spans = spans
        self.layouts = layouts
        for p in hook_set.active.values():
            for e in p.entries:
                self._add(p, e.fn, None, e.readonly)
        for b, hooks in enumerate(seq_hooks or ()):
            for item in hooks or ():
                if not isinstance(item, (list, tuple)) or len(item) != 2:
                    raise errors.ArgumentTypeError(f"seq_hooks[{b}] entries are (name, fn) pairs, got {item!r:.80}")
                name, fn = item
                fn, readonly = _unwrap(fn)
                if isinstance(name, str) and name in hook_set.points:
                    self._add(hook_set.points[name], fn, b, readonly)
                else:
                    for n in hook_set.resolve(name):
                        self._add(hook_set.points[n], fn, b, readonly)

    def _add(self, point, fn, seq, readonly):
        i = point.layer_index
        if i is None:
            h = self.top = self.top or _Hooks(self)
        else:
            h = self.layers[i] = self.layers[i] or _Hooks(self)
        h.by_short.setdefault(point.short, []).append((fn, point, seq, readonly))

    def run(self, short, entries, t, spans, detect):
        changed = False
        only = spans[0].seq if len(spans) == 1 else None  # the pass's one sequence (decode steps)
        for fn, point, seq, readonly in entries:
            if seq is None or seq == only:
                view = t
                point.ctx["spans"] = spans
                point.ctx["seq"] = only
            else:
                sp = next((s for s in spans if s.seq == seq), None)
                if sp is None:
                    continue
                view = t if len(spans) == 1 else t[sp.row0:sp.row0 + sp.rows]
                point.ctx["spans"] = [Span(seq, 0, sp.rows, sp.pos0)]
                point.ctx["seq"] = seq
            changed |= self.call(short, fn, point, readonly, view, detect)
        return changed

    def call(self, short, fn, point, readonly, view, detect, share=False):
        layout = self.layouts.get(short)
        cur = view if share else layout[0](view) if layout else view.clone()
        try:
            r = fn(cur, point)
        except Exception as exc:
            exc.add_note(f"(raised by a hook on {point.name})")
            raise
        if readonly:
            return False
        if r is not None:
            if not isinstance(r, Tensor) or r.shape != cur.shape:
                got = r.shape if isinstance(r, Tensor) else type(r).__name__
                raise errors.ShapeError(f"a hook on {point.name} must return None or a Tensor of shape "
                                        f"{cur.shape}, got {got}")
            cur = r
        if detect:
            before = bytes(view.memoryview())
        if layout:
            layout[1](view, cur)
        else:
            view.copy_(cur)
        return detect and bytes(view.memoryview()) != before
