"""What the magics and widgets share: one lock per model, streaming under it, token labels, and
attention patterns through the public interp API.

Every generation started here takes the model's lock around each step (one token), so two
widgets on one model interleave token by token, each with its own KV cache and sampler, and a
widget generating in the background never shares a step with a magic in the foreground. (The
model also serialises its own forward passes, which share activation buffers; this lock is the
notebook's guarantee whatever the model does.)
"""
import contextlib
import threading
import weakref

import traitlets as T

from toolkit import errors
from toolkit.common.validate import available_memory  # a module name here: tests fake it

_locks = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


def model_lock(model):
    """The lock every notebook-side generation on `model` holds for each step."""
    with _locks_guard:
        lock = _locks.get(model)
        if lock is None:
            lock = _locks[model] = threading.RLock()
        return lock


def stream_events(model, prompt, stop=None, top=5, **settings):
    """TokenEvents of `model.stream(prompt, details=True)`, one step at a time under the model's lock.

    `stop` (a threading.Event) is checked before every step, so setting it ends generation after
    at most the token being computed when it was set. `probs=False` among the settings skips the
    probabilities where only text and timings are wanted."""
    lock = model_lock(model)
    with lock:
        gen = iter(model.stream(prompt, details=True, top=top, **settings))
    try:
        while stop is None or not stop.is_set():
            with lock:
                ev = next(gen, None)
            if ev is None:
                return
            yield ev
    finally:
        with lock:
            gen.close()


def check_model(model, who, *methods):
    """Raises ArgumentTypeError unless `model` looks like a loaded toolkit.Model (has a config and
    `methods`): a name or a path passed by mistake gets a sentence, not an AttributeError."""
    missing = [a for a in ("config",) + methods if getattr(type(model), a, None) is None and not hasattr(model, a)]
    if missing:
        raise errors.ArgumentTypeError(f"{who} needs a loaded model (toolkit.load(...)), got {type(model).__name__} "
                                       f"{model!r:.60}")
    return model


@contextlib.contextmanager
def typed_traits(who):
    """A wrong type given to a widget's constructor raises ArgumentTypeError (traitlets' own
    TraitError is not a ToolkitError)."""
    try:
        yield
    except T.TraitError as exc:
        raise errors.ArgumentTypeError(f"{who}: {exc}") from None


class StaticView:
    """For a widget whose text/html fallback (what a saved notebook shows where widgets do not run:
    GitHub, nbconvert) changes after it is displayed: it is displayed under a display id, and
    `update_static()` replaces that output's data, so the saved notebook keeps the latest state
    (the finished reply), not the empty panel displayed before Generate was pressed."""

    _display_id = None

    def _ipython_display_(self, **kwargs):
        from IPython.display import display

        if self._display_id is None:
            import uuid

            self._display_id = uuid.uuid4().hex
        display(self._repr_mimebundle_(), raw=True, display_id=self._display_id)

    def update_static(self):
        if self._display_id is not None:
            from IPython.display import update_display

            update_display(self._repr_mimebundle_(), raw=True, display_id=self._display_id)


def is_open(model):
    """False once the model was closed (its weights unmapped)."""
    try:
        model.model
    except errors.ToolkitError:
        return False
    return True


def prompt_ids(model, prompt):
    if isinstance(prompt, str):
        if not prompt:
            raise errors.InvalidArgumentError("the prompt is empty")
        return model.tokenizer.encode(prompt)
    return [int(i) for i in prompt]


def token_texts(model, ids):
    """Each id decoded on its own (what a label or a hover shows)."""
    return [model.tokenizer.decode([i]) for i in ids]


def need(model, method, what):
    fn = getattr(model, method, None)
    if fn is None:
        raise errors.UnsupportedError(f"{what} needs model.{method}(), which this toolkit version does not have yet")
    return fn


def check_layer(model, layer):
    n = model.config.num_hidden_layers
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise errors.ArgumentTypeError(f"layer must be an int, got {layer!r}")
    if not -n <= layer < n:
        raise errors.IndexOutOfRangeError(f"layer must be in 0..{n - 1}, got {layer}")
    return layer % n


def check_head(model, head):
    n = model.config.num_attention_heads
    if head is None:
        return None
    if isinstance(head, bool) or not isinstance(head, int):
        raise errors.ArgumentTypeError(f"head must be an int or None, got {head!r}")
    if not -n <= head < n:
        raise errors.IndexOutOfRangeError(f"head must be in 0..{n - 1}, got {head}")
    return head % n


PY_FLOAT_BYTES = 32   # a float in a list: the object (24 B) and its slot (8 B)


def attention_patterns(model, prompt, layer):
    """(token texts, patterns [head][query][key] as lists) of one layer, via run_with_cache."""
    layer = check_layer(model, layer)
    run = need(model, "run_with_cache", "the attention pattern")
    ids = prompt_ids(model, prompt)
    need_bytes = model.config.num_attention_heads * len(ids) ** 2 * (4 + PY_FLOAT_BYTES)
    free = available_memory()
    if need_bytes > free // 2:
        # the kernel would be killed for memory instead of raising
        raise errors.OutOfMemoryError(
            f"the attention patterns of {len(ids)} tokens ({model.config.num_attention_heads} heads x {len(ids)}^2, as "
            f"Python lists) would take ~{need_bytes / 2**30:.1f} GiB, more than half the memory available "
            f"({free / 2**30:.1f} GiB): use a shorter prompt")
    name = f"blocks.{layer}.attn.hook_pattern"
    with model_lock(model):
        _, cache = run(ids, names_filter=name)
    pat = cache[name]
    rows = pat.tolist() if hasattr(pat, "tolist") else pat
    if len(getattr(pat, "shape", ())) == 4:  # [batch, head, q, k]
        rows = rows[0]
    tokens = token_texts(model, ids)
    if len(tokens) != len(rows[0]):
        tokens = [str(i) for i in range(len(rows[0]))]
    return tokens, rows
