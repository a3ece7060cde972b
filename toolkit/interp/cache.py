"""`run_with_cache`, `run_with_hooks` and the ActivationCache (TransformerLens's `ActivationCache`):
copies of the activations a forward pass produced, by hook name or TransformerLens shorthand,
plus the residual stream stacked per layer and the logit lens.

Every tensor is the engine's, so `t.memoryview()` (and `memoryview(t)` on Python 3.12+) or NumPy's
`np.asarray(t)` (through `__array_interface__`) see its memory without a copy.
"""
import difflib
import re

from toolkit import errors

from ..common import validate
from ..core.engine import functional as F
from ..core.engine.tensor import Tensor
from ..models.hook_points import ReadOnly
from ..models.llama.model import as_id_list
from .registry import expand, module_of

_LAYER = re.compile(r"^blocks\.(\d+)\.(?:(\w+)\.)?hook_(\w+)$")
_TOP = re.compile(r"^(?:(\w+)\.)?hook_(\w+)$")
# TransformerLens's other names for some hook points (utils.get_act_name)
_ALIASES = {"attn": "pattern", "attn_logits": "attn_scores", "embed": "embed", "mlp_pre": "pre",
            "mlp_post": "post", "key": "k", "query": "q", "value": "v"}


class CacheKeyError(errors.InvalidArgumentError, KeyError):
    """A cache key that is not a hook name, or names a hook point that was not cached."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""


def token_ids(model, prompt_or_ids):
    """Token ids of a prompt (text is encoded without special tokens) or of a list/Tensor of ids."""
    if isinstance(prompt_or_ids, str):
        if not prompt_or_ids:
            raise errors.InvalidArgumentError("the prompt is empty")
        tok = module_of(model).tokenizer
        if tok is None:
            raise errors.ToolkitError("this model has no tokenizer: pass token ids")
        return tok.encode(prompt_or_ids)
    ids = as_id_list(prompt_or_ids, module_of(model).config.vocab_size)
    if not ids:
        raise errors.InvalidArgumentError("no tokens given")
    return ids


def run_with_hooks(model, prompt_or_ids, fwd_hooks=(), logits="all"):
    """Logits [n_tokens, vocab] of one forward pass with fwd_hooks [(name or filter, fn)] applied to
    this pass only (nothing stays registered, whatever happens)."""
    lm = module_of(model)
    ids = token_ids(model, prompt_or_ids)
    hooks = expand(lm, fwd_hooks)
    return lm.forward_batch([(ids, lm.new_cache(len(ids)))], logits=logits, seq_hooks=[hooks])


def run_with_cache(model, prompt_or_ids, names_filter=None, fwd_hooks=()):
    """(logits [n_tokens, vocab], ActivationCache) of one forward pass. names_filter (a name, a
    glob, a list or a predicate; None: every hook point) picks what is kept; fwd_hooks, if given,
    apply first, so the cache holds what they made."""
    lm = module_of(model)
    ids = token_ids(model, prompt_or_ids)
    names = lm.hook_names() if names_filter is None else lm.hook_set.resolve(names_filter)
    nbytes = getattr(lm, "hook_nbytes", None)
    if nbytes is not None:
        _check_memory(nbytes(names, len(ids)) + nbytes(["hook_logits"], len(ids)), len(ids), names_filter)
    store = {}

    def keep(t, hook):  # t is already a copy, never touched again by the pass
        store[hook.name] = t

    hooks = expand(lm, fwd_hooks) + [(n, ReadOnly(keep)) for n in names]
    logits = lm.forward_batch([(ids, lm.new_cache(len(ids)))], logits="all", seq_hooks=[hooks])
    return logits, ActivationCache({n: store[n] for n in names if n in store}, lm, ids)


def _check_memory(need, n_tokens, names_filter):
    """OutOfMemoryError before the pass when the copies would not fit (the kernel's OOM killer
    would end the Jupyter kernel instead)."""
    avail = validate.available_memory()
    if need > avail:
        raise errors.OutOfMemoryError(
            f"caching {'every hook point' if names_filter is None else 'these hook points'} of {n_tokens} tokens "
            f"needs {need / 2**30:.2f} GiB but only {avail / 2**30:.2f} GiB of memory is available; narrow "
            f"names_filter (e.g. 'blocks.*.hook_resid_post'; attention scores and patterns grow with tokens^2) "
            f"or use a shorter prompt")


class ActivationCache:
    """Activations of one forward pass by hook name, in forward order.

    cache["blocks.3.hook_resid_post"], or TransformerLens shorthand: cache["resid_post", 3],
    cache["pattern", 0], cache["q", -1], cache["scale", 2, "ln1"], cache["normalized"] (ln_final).
    """

    def __init__(self, store, model, ids):
        self._store = dict(store)
        self.model = model
        self.ids = list(ids)
        self.n_layers = model.config.num_hidden_layers
        index = {}
        for name in model.hook_names():
            m = _LAYER.match(name)
            if m:
                layer, sub, short = int(m.group(1)), m.group(2), m.group(3)
            else:
                m = _TOP.match(name)
                layer, sub, short = None, m.group(1), m.group(2)
            index.setdefault((short, layer), []).append((sub, name))
        self._index = index

    # ---- lookup ----
    def _name(self, key):
        if isinstance(key, str):
            if key in self.model.hook_set.points:
                return key
            try:  # shorthand without a layer: cache["embed"], cache["normalized"] (ln_final)
                return self._name((key,))
            except errors.ToolkitError:
                return key
        if not isinstance(key, tuple) or not key or not isinstance(key[0], str) or len(key) > 3:
            raise errors.ArgumentTypeError(f"cache keys are hook names or (name, layer[, sublayer]) tuples, got {key!r}")
        short = key[0].removeprefix("hook_")
        short = _ALIASES.get(short, short)
        if short == "result":
            raise CacheKeyError("TransformerLens's hook_result (each head's output in d_model) is not a hook point "
                                "here; attn.hook_z holds each head's output before o_proj ([pos, head, d_head])")
        layer = key[1] if len(key) > 1 else None
        sub = key[2] if len(key) > 2 else None
        if layer is not None:
            if validate.as_index(layer) is None:
                raise errors.ArgumentTypeError(f"a layer is an int, got {layer!r}")
            layer = validate.as_index(layer)
            if not -self.n_layers <= layer < self.n_layers:
                raise errors.IndexOutOfRangeError(f"layer {layer} out of range for {self.n_layers} layers")
            layer %= self.n_layers
        cands = self._index.get((short, layer), [])
        if sub is not None:
            cands = [c for c in cands if c[0] == sub]
        if len(cands) == 1:
            return cands[0][1]
        if not cands:
            raise CacheKeyError(f"no hook point for {key!r}; short names are: "
                                f"{', '.join(sorted({s for s, _ in self._index}))}")
        raise CacheKeyError(f"{key!r} is ambiguous: add one of {', '.join(repr(c[0]) for c in cands)} "
                            f"(e.g. {(key[0], layer, cands[0][0])!r})")

    def __getitem__(self, key):
        name = self._name(key)
        t = self._store.get(name)
        if t is not None:
            return t
        if name in self.model.hook_set.points:
            raise CacheKeyError(f"{name} was not cached: include it in run_with_cache(names_filter=...)")
        close = difflib.get_close_matches(name, list(self._store) or self.model.hook_names(), n=3, cutoff=0.6)
        raise CacheKeyError(f"no hook point named {name!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))

    def __contains__(self, key):
        try:
            return self._name(key) in self._store
        except errors.ToolkitError:
            return False

    def keys(self):
        return list(self._store)

    def values(self):
        return list(self._store.values())

    def items(self):
        return list(self._store.items())

    def __iter__(self):
        return iter(self._store)

    def __len__(self):
        return len(self._store)

    @property
    def nbytes(self):
        return sum(t.nbytes for t in self._store.values())

    def __repr__(self):
        return f"ActivationCache({len(self._store)} activations, {self.nbytes / 2**20:.2f} MiB, {len(self.ids)} tokens)"

    # ---- residual stream ----
    def accumulated_resid(self, layer=None, incl_mid=False, apply_ln=False, return_labels=False):
        """The residual stream at each layer, stacked: Tensor [components, pos, d_model]
        (TransformerLens's order: resid_pre of layers 0..layer, with resid_mid after each when
        incl_mid; layer None (or -1, or n_layers) adds the final resid_post as "final_post").
        apply_ln runs each through the final norm (each row its own scale), as the logit lens does."""
        L = self.n_layers
        layer = validate.int_like(layer)
        if layer is None or layer == -1 or layer == L:
            upto, final = L, True
        elif isinstance(layer, int) and not isinstance(layer, bool) and 0 <= layer < L:
            upto, final = layer + 1, False
        else:
            raise errors.IndexOutOfRangeError(f"layer must be in 0..{L} (or None, -1), got {layer!r}")
        names, labels = [], []
        for i in range(upto):
            names.append(f"blocks.{i}.hook_resid_pre")
            labels.append(f"{i}_pre")
            if incl_mid and (final or i < upto - 1):
                names.append(f"blocks.{i}.hook_resid_mid")
                labels.append(f"{i}_mid")
        if final:
            names.append(f"blocks.{L - 1}.hook_resid_post")
            labels.append("final_post")
        missing = [n for n in names if n not in self._store]
        if missing:
            raise CacheKeyError(f"accumulated_resid needs {len(missing)} uncached activations, e.g. {missing[0]}: "
                                f"run_with_cache with names_filter=lambda n: 'resid' in n (or None)")
        first = self._store[names[0]]
        out = Tensor((len(names),) + first.shape)
        for k, n in enumerate(names):
            out[k].copy_(self._store[n])
        if apply_ln:
            m = self.model
            F.rms_norm(out, m.norm.weight, m.config.rms_norm_eps, out=out)
        return (out, labels) if return_labels else out

    def logit_lens(self, k=10, layer=None, incl_mid=False):
        """Each layer's residual stream through the final norm and the unembedding: the top k
        tokens and their probabilities per layer and position (a LogitLens)."""
        resid, labels = self.accumulated_resid(layer, incl_mid=incl_mid, apply_ln=True, return_labels=True)
        n, T, _ = resid.shape
        V = self.model.config.vocab_size
        k = validate.int_like(k)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= V:
            raise errors.InvalidArgumentError(f"k must be an int in 1..{V}, got {k!r}")
        ids, probs = [], []
        for c in range(n):
            logits = self.model.unembed(resid[c])                         # [T, vocab]
            p = F.softmax(logits, out=logits)
            vals, idx = F.topk(p, k)                                      # [T, k] each
            probs.append(vals.tolist())
            ids.append(idx.tolist())
        return LogitLens(labels, ids, probs, self.ids, self.model.tokenizer)


class LogitLens:
    """Top-k predictions of every residual-stream component at every position.

    ids[c][pos][j] and probs[c][pos][j] for component c (labels[c], e.g. "3_pre", "final_post");
    tokens[c][pos][j] decodes the ids; table(pos) prints one position."""

    def __init__(self, labels, ids, probs, input_ids, tokenizer=None):
        self.labels, self.ids, self.probs = labels, ids, probs
        self.input_ids = list(input_ids)
        self._tok = tokenizer
        self._tokens = None

    def _decode(self, i, memo):
        if i not in memo:
            memo[i] = self._tok.decode([i]) if self._tok is not None else str(i)
        return memo[i]

    @property
    def tokens(self):
        if self._tokens is None:
            memo = {}
            self._tokens = [[[self._decode(i, memo) for i in row] for row in comp] for comp in self.ids]
        return self._tokens

    def table(self, pos=-1, k=3):
        """A text table of position pos: one line per component with its top k tokens."""
        T = len(self.input_ids)
        if validate.as_index(pos) is None or not -T <= validate.as_index(pos) < T:
            raise errors.IndexOutOfRangeError(f"position {pos} out of range for {T} tokens")
        pos = validate.as_index(pos)
        memo = {}
        head = f"logit lens at position {pos % T} (input token {self._decode(self.input_ids[pos], memo)!r})"
        lines = [head]
        for c, label in enumerate(self.labels):
            top = "  ".join(f"{self.tokens[c][pos][j]!r} {self.probs[c][pos][j]:.3f}"
                            for j in range(min(k, len(self.ids[c][pos]))))
            lines.append(f"{label:>10}  {top}")
        return "\n".join(lines)

    def to_dict(self):
        return {"labels": self.labels, "ids": self.ids, "probs": self.probs, "input_ids": self.input_ids}

    def __repr__(self):
        return self.table()
