"""LlamaModel: the Llama-family decoder (GQA attention, SwiGLU MLP, RMSNorm, RoPE) on the C engine.

The forward pass takes a *batch of sequences*, each with its own KVCache, and runs every matmul once
over all their new tokens stacked as rows; only attention is per sequence. Each block owns its
forward (read `DecoderLayer.forward` top to bottom); `LlamaModel.forward_batch` only does the batch
bookkeeping. Between ops sit the hook points of `HOOK_POINTS` (TransformerLens names): a pass that
nobody hooks tests one `None` per layer and reuses its activation buffers.
"""
import logging
import math
import re
import threading
import weakref

from toolkit import errors

from ...common import validate
from ...core.engine import functional as F
from ...core.engine.backend import Embedding, Linear, Module, ModuleList, RMSNorm, Tensor
from ..hook_points import HookSet, PassHooks, Span
from .config import LlamaConfig

logger = logging.getLogger(__name__)


class KVCache:
    """The keys and values of one sequence for every layer: k[i], v[i] are [capacity, Hkv, D] in
    config.kv_cache_dtype (F32 by default, or F16).

    `length` tokens are filled. A cache belongs to one sequence; batching gives each sequence its
    own. Truncate it to rewind a sequence (e.g. to branch a prompt).
    """

    def __init__(self, config: LlamaConfig, capacity: int):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise errors.InvalidArgumentError(f"KV cache capacity must be a positive int, got {capacity!r}")
        if capacity > config.max_position_embeddings:
            raise errors.ContextLengthError(
                f"KV cache of {capacity} tokens exceeds the context length {config.max_position_embeddings}")
        # Stored head-major [Hkv, capacity, D] so attention streams each head's keys contiguously
        # (position-major rows made decode attention latency-bound); k[i]/v[i] are the
        # [capacity, Hkv, D] views that the ops take.
        shape = (config.num_key_value_heads, capacity, config.head_dim)
        dtype = config.kv_cache_dtype
        validate.fits_in_memory(2 * config.num_hidden_layers * shape[0] * capacity * shape[2] * (2 if dtype == "F16" else 4),
                                f"a KV cache of {capacity} tokens")
        self.k = [Tensor(shape, dtype).permute(1, 0, 2) for _ in range(config.num_hidden_layers)]
        self.v = [Tensor(shape, dtype).permute(1, 0, 2) for _ in range(config.num_hidden_layers)]
        self.capacity = capacity
        self.length = 0

    @property
    def free(self):
        return self.capacity - self.length

    def decode_kv_set(self, i):
        """Layer i's cache as attention_seqs takes it for one new row, made once per cache (a decode
        step would otherwise convert the same pointers in every layer, every token)."""
        sets = self.__dict__.setdefault("_decode_kv", {})
        kv = sets.get(i)
        k, v = self.k[i], self.v[i]
        if kv is None or kv._keep[0][0] is not k or kv._keep[1][0] is not v:  # rebuilt if a layer's tensors were replaced
            kv = sets[i] = F.KVSet([1], [k], [v])
        return kv

    def truncate(self, length):
        if isinstance(length, bool) or not isinstance(length, int):
            raise errors.ArgumentTypeError(f"a cache length is an int, got {length!r:.40}")
        if not 0 <= length <= self.length:
            raise errors.InvalidArgumentError(f"cannot truncate a cache of {self.length} tokens to {length}")
        self.length = length

    def reset(self):
        self.length = 0

    @property
    def nbytes(self):
        return sum(t.nbytes for t in self.k) + sum(t.nbytes for t in self.v)

    def __repr__(self):
        return f"KVCache(length={self.length}, capacity={self.capacity}, {self.nbytes / 2**20:.1f} MiB)"


# Every hook point, declared once: (name, shape, what it holds); {i} is the layer. `pos` counts the
# rows of the pass (the new tokens of every sequence, stacked; `hook.ctx["spans"]` says whose rows
# are whose). Attention scores and patterns are per sequence: they fire once per sequence, with its
# queries against every key in its cache. docs/hooks.md is generated from this table
# (python -m toolkit.interp.hooks_doc).
HOOK_POINTS = (
    ("hook_embed", "[pos, d_model]", "token embeddings: the residual stream entering block 0"),
    ("blocks.{i}.hook_resid_pre", "[pos, d_model]", "residual stream entering block i"),
    ("blocks.{i}.ln1.hook_scale", "[pos, 1]", "RMS of each row, sqrt(mean(x^2) + eps)"),
    ("blocks.{i}.ln1.hook_normalized", "[pos, d_model]",
     "x / scale * w: the attention's input (TransformerLens's value with the norm weight folded in)"),
    ("blocks.{i}.attn.hook_q", "[pos, head, d_head]", "queries before RoPE (Hugging Face layout)"),
    ("blocks.{i}.attn.hook_k", "[pos, kv_head, d_head]", "keys before RoPE (Hugging Face layout)"),
    ("blocks.{i}.attn.hook_v", "[pos, kv_head, d_head]", "values, as stored in the KV cache"),
    ("blocks.{i}.attn.hook_rot_q", "[pos, head, d_head]", "queries after RoPE"),
    ("blocks.{i}.attn.hook_rot_k", "[pos, kv_head, d_head]", "keys after RoPE, as stored in the KV cache"),
    ("blocks.{i}.attn.hook_attn_scores", "[head, q_pos, k_pos]",
     "q.k / sqrt(d_head), -inf where masked (per sequence)"),
    ("blocks.{i}.attn.hook_pattern", "[head, q_pos, k_pos]", "softmax of the scores (per sequence)"),
    ("blocks.{i}.attn.hook_z", "[pos, head, d_head]", "pattern-weighted values, before o_proj"),
    ("blocks.{i}.hook_attn_out", "[pos, d_model]", "attention output (after o_proj)"),
    ("blocks.{i}.hook_resid_mid", "[pos, d_model]", "residual stream after attention"),
    ("blocks.{i}.ln2.hook_scale", "[pos, 1]", "RMS of each row, sqrt(mean(x^2) + eps)"),
    ("blocks.{i}.ln2.hook_normalized", "[pos, d_model]", "x / scale * w: the MLP's input"),
    ("blocks.{i}.mlp.hook_pre", "[pos, d_mlp]", "gate projection, before SiLU"),
    ("blocks.{i}.mlp.hook_pre_linear", "[pos, d_mlp]", "up projection"),
    ("blocks.{i}.mlp.hook_post", "[pos, d_mlp]", "silu(gate) * up: down_proj's input"),
    ("blocks.{i}.hook_mlp_out", "[pos, d_model]", "MLP output (after down_proj)"),
    ("blocks.{i}.hook_resid_post", "[pos, d_model]", "residual stream leaving block i"),
    ("ln_final.hook_scale", "[pos, 1]", "RMS of each row, sqrt(mean(x^2) + eps)"),
    ("ln_final.hook_normalized", "[pos, d_model]", "x / scale * w: the unembedding's input"),
    ("hook_logits", "[pos, d_vocab]", "logits"),
)

_HOOK_SHAPES = {name: shape.strip("[]").split(", ") for name, shape, _ in HOOK_POINTS}
_LAYER_PREFIX = re.compile(r"^blocks\.\d+\.")

# Hooks that see Q/K heads; weights from GGUF files keep their rows permuted within each head (so
# RoPE rotates adjacent pairs), and these hooks show them in Hugging Face's order instead.
_QK_HOOKS = ("attn.hook_q", "attn.hook_k", "attn.hook_rot_q", "attn.hook_rot_k")


def hook_names_for(n_layers):
    """Every hook name of a model with n_layers blocks, in the order a forward pass reaches them."""
    head = [n for n, _, _ in HOOK_POINTS if n.startswith("hook_embed")]
    per_layer = [n for n, _, _ in HOOK_POINTS if "{i}" in n]
    tail = [n for n, _, _ in HOOK_POINTS if "{i}" not in n and n not in head]
    return head + [n.format(i=i) for i in range(n_layers) for n in per_layer] + tail


def _adjacent_to_hf(view):
    """[rows, heads, D] with each head's dims in GGUF's order (pairs 2i, 2i+1 rotate together) ->
    a copy in Hugging Face's order (i, i + D/2)."""
    R, H, D = view.shape
    return view.reshape(R * H, D // 2, 2).permute(0, 2, 1).contiguous().reshape(R, H, D)


def _hf_to_adjacent(view, t):
    R, H, D = view.shape
    view.reshape(R * H, D // 2, 2).copy_(t.contiguous().reshape(R * H, 2, D // 2).permute(0, 2, 1))


class LlamaAttention(Module):
    def __init__(self, config: LlamaConfig, layer_index=0):
        super().__init__()
        self.q_proj = Linear(config.hidden_size, config.q_dim)
        self.k_proj = Linear(config.hidden_size, config.kv_dim)
        self.v_proj = Linear(config.hidden_size, config.kv_dim)
        self.o_proj = Linear(config.q_dim, config.hidden_size)
        self.config = config
        self.layer_index = layer_index
        self.n_heads, self.n_kv_heads, self.head_dim = (config.num_attention_heads, config.num_key_value_heads,
                                                        config.head_dim)
        self.rope_theta, self.rope_mode = config.rope_theta, config.rope_mode
        self.scale = config.head_dim ** -0.5

    def forward(self, h, p=None, hk=None):
        """h [N, d_model]: the normalised rows of every sequence in pass p; appends their keys and
        values to each sequence's KV cache; returns the attention output [N, d_model] (p.s.o).
        Without p, h's rows are one new sequence (positions 0..N-1, a KV cache of its own)."""
        if p is None:
            p = _standalone(self.config, h)
        s, D, i = p.s, self.head_dim, self.layer_index
        # q [N, H*D], k and v [N, Hkv*D]: one engine call, so a decode step starts the threads
        # once for the three (bit-identical to three matmuls)
        F.matmul_n(h, [self.q_proj.weight, self.k_proj.weight, self.v_proj.weight], outs=s.qkv)
        if hk:
            hk.fire("attn.hook_q", s.q3)                                  # [N, H, D]
            hk.fire("attn.hook_k", s.k3)                                  # [N, Hkv, D]
            hk.fire("attn.hook_v", s.v3)
        F.rope_(s.q3, p.pos, D, self.rope_theta, mode=self.rope_mode)
        F.rope_(s.k3, p.pos, D, self.rope_theta, mode=self.rope_mode)
        if hk:
            hk.fire("attn.hook_rot_q", s.q3)
            hk.fire("attn.hook_rot_k", s.k3)
        if hk and ("attn.hook_pattern" in hk or "attn.hook_attn_scores" in hk):
            for sq in p.seqs:
                kc, vc = sq.cache.k[i], sq.cache.v[i]                     # [capacity, Hkv, D]
                F.copy_rows_(kc, sq.start, sq.k3)                         # append to the cache
                F.copy_rows_(vc, sq.start, sq.v3)
                self._attend_hooked(sq, kc, vc, sq.start + sq.t, hk)
        else:
            # every sequence's keys and values appended to its cache, and its rows attended,
            # in one engine call: the threads share all the sequences' work
            F.attention_seqs(s.q3, p.pos, None, p.kv_sets[i], None, s.k3, s.v3, self.scale, out=s.z3)
        if hk:
            hk.fire("attn.hook_z", s.z3)
        return F.matmul(s.z, self.o_proj.weight, out=s.o)                 # [N, d_model]

    def _attend_hooked(self, sq, kc, vc, n_kv, hk):
        """Attention of one sequence with its scores or pattern hooked. Unless a hook edits them,
        the fused kernel computes the output (so reading changes nothing); edited scores or an
        edited pattern are mixed with the values op by op."""
        if "attn.hook_attn_scores" in hk:
            scores = self._scores(sq, kc, n_kv)                           # [H, T, n_kv]
            if hk.fire_seq("attn.hook_attn_scores", scores, sq.b, sq.start, detect=True):  # edited
                probs = F.softmax(scores, out=scores)
                hk.fire_seq("attn.hook_pattern", probs, sq.b, sq.start)
                self._mix(probs, vc, n_kv, sq.z3)
                return
        _, probs = F.scaled_dot_product_attention(sq.q3, kc, vc, sq.pos, n_kv, self.scale, out=sq.z3,
                                                  return_probs=True)    # probs [H, T, n_kv]
        if hk.fire_seq("attn.hook_pattern", probs, sq.b, sq.start, detect=True):
            self._mix(probs, vc, n_kv, sq.z3)                             # a hook edited the pattern

    def _scores(self, sq, kc, n_kv):
        """[H, T, n_kv]: q.k * scale of each head, -inf where a query may not look."""
        H, G = self.n_heads, self.n_heads // self.n_kv_heads
        T = sq.t
        scores = Tensor((H, T, n_kv))
        qh, kh = sq.q3.permute(1, 0, 2), kc.permute(1, 0, 2)              # [H, T, D], [Hkv, capacity, D]
        for h in range(H):
            F.matmul(qh[h], kh[h // G][:n_kv], out=scores[h])
        F.scale(scores, self.scale, out=scores)
        mask = sq.mask
        if mask is None:  # [T, n_kv]: 0 where query t may look, -inf after it; the same in every layer
            inf = float("-inf")
            mask = sq.mask = Tensor((T, n_kv)).load(
                [v for t in range(T) for v in [0.0] * (sq.start + t + 1) + [inf] * (n_kv - sq.start - t - 1)])
        for h in range(H):
            F.add(scores[h], mask, out=scores[h])
        return scores

    def _mix(self, probs, vc, n_kv, z3):
        """z3 [T, H, D] = probs [H, T, n_kv] @ v of each head's KV head."""
        H, G = self.n_heads, self.n_heads // self.n_kv_heads
        vh, zh = vc.permute(1, 0, 2), z3.permute(1, 0, 2)                 # [Hkv, capacity, D], [H, T, D]
        vt = [Tensor((self.head_dim, n_kv)).copy_(vh[g][:n_kv].transpose(0, 1)) for g in range(self.n_kv_heads)]
        for h in range(H):
            F.matmul(probs[h], vt[h // G], out=zh[h])


class LlamaMLP(Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.gate_proj = Linear(config.hidden_size, config.intermediate_size)
        self.up_proj = Linear(config.hidden_size, config.intermediate_size)
        self.down_proj = Linear(config.intermediate_size, config.hidden_size)
        self.config = config

    def forward(self, h, p=None, hk=None):
        """h [N, d_model] -> down(silu(gate(h)) * up(h)) [N, d_model] (p.s.o; a new tensor without p)."""
        if p is None:
            p = _standalone(self.config, h)
        s = p.s
        F.matmul_n(h, [self.gate_proj.weight, self.up_proj.weight], outs=s.gate_up)  # [N, d_mlp] each
        if hk:
            hk.fire("mlp.hook_pre", s.gate)
            hk.fire("mlp.hook_pre_linear", s.up)
        act = F.silu_mul(s.gate, s.up, out=s.gate)                        # [N, d_mlp]
        if hk:
            hk.fire("mlp.hook_post", act)
        return F.matmul(act, self.down_proj.weight, out=s.o)              # [N, d_model]


class DecoderLayer(Module):
    def __init__(self, config: LlamaConfig, layer_index=0):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.self_attn = LlamaAttention(config, layer_index)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = LlamaMLP(config)
        self.config = config
        self.layer_index = layer_index

    def forward(self, x, p=None):
        """x [N, d_model]: the residual stream of every row of pass p, updated in place and returned.
        Without p, x's rows are one new sequence (positions 0..N-1) and a new tensor is returned."""
        if p is None:
            p = _standalone(self.config, x)
            x = x.clone()
        hk = p.hooks.layers[self.layer_index] if p.hooks else None       # None: nothing hooked here
        if hk:
            hk.fire("hook_resid_pre", x)
        h = self.input_layernorm(x, out=p.s.h)                            # [N, d_model]
        if hk:
            _norm_hooks(hk, "ln1", self.input_layernorm, x, h)
        a = self.self_attn(h, p, hk)                                      # [N, d_model]
        if hk:
            hk.fire("hook_attn_out", a)
        F.add(x, a, out=x)
        if hk:
            hk.fire("hook_resid_mid", x)
        h = self.post_attention_layernorm(x, out=p.s.h)
        if hk:
            _norm_hooks(hk, "ln2", self.post_attention_layernorm, x, h)
        m = self.mlp(h, p, hk)                                            # [N, d_model]
        if hk:
            hk.fire("hook_mlp_out", m)
        F.add(x, m, out=x)
        if hk:
            hk.fire("hook_resid_post", x)
        return x


def _norm_hooks(hk, prefix, norm, x, h, spans=None):
    """Fires `prefix.hook_scale` ([rows, 1], computed only when hooked; an edited scale renormalises
    h with it) and `prefix.hook_normalized` (h, the norm's output)."""
    if prefix + ".hook_scale" in hk:
        d = x.shape[-1]
        sq = F.matmul(F.mul(x, x), Tensor.from_list([1.0] * d, (1, d)))  # [rows, 1]: sum of squares
        scale = Tensor((x.shape[0], 1)).load([math.sqrt(v / d + norm.eps) for v in sq.to_list()])
        if hk.fire(prefix + ".hook_scale", scale, spans, detect=True):
            for r, s in enumerate(scale.to_list()):
                F.scale(x[r], 1.0 / s, out=h[r])
            F.mul(h, norm.weight, out=h)
    hk.fire(prefix + ".hook_normalized", h, spans)


class Unembed(Module):
    """logits = h @ W_U^T, with W_U the output weight (the embedding's when they are tied); holds no
    parameter of its own, so tied weights are not listed twice."""

    def __init__(self, model):
        super().__init__()
        object.__setattr__(self, "_model", weakref.ref(model))

    def forward(self, h, out=None):
        return F.matmul(h, self._model().output_weight, out=out)           # [rows, vocab]

    def extra_repr(self):
        return "tied to embed_tokens" if self._model().config.tie_word_embeddings else "lm_head"


class _Scratch:
    """Activation buffers for one forward pass of N rows, reused by every layer."""

    def __init__(self, c: LlamaConfig, n: int):
        self.x = Tensor((n, c.hidden_size))            # residual stream
        self.h = Tensor((n, c.hidden_size))            # normalised input of a sublayer
        self.q = Tensor((n, c.q_dim))
        self.k = Tensor((n, c.kv_dim))
        self.v = Tensor((n, c.kv_dim))
        self.z = Tensor((n, c.q_dim))                  # attention output per head, before o_proj
        self.o = Tensor((n, c.hidden_size))            # sublayer output
        self.gate = Tensor((n, c.intermediate_size))
        self.up = Tensor((n, c.intermediate_size))
        H, Hkv, D = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.q3 = self.q.reshape(n, H, D)              # [rows, heads, head_dim] views of the same memory
        self.k3 = self.k.reshape(n, Hkv, D)
        self.v3 = self.v.reshape(n, Hkv, D)
        self.z3 = self.z.reshape(n, H, D)
        self.qkv = [self.q, self.k, self.v]            # outputs of the fused projections (F.matmul_n)
        self.gate_up = [self.gate, self.up]


class _Seq:
    """One sequence of a pass: its cache, where its rows sit, and views of its rows."""

    __slots__ = ("b", "cache", "start", "t", "row0", "q3", "k3", "v3", "z3", "pos", "mask")


class _Pass:
    """What the blocks of one forward pass share: scratch buffers, positions, sequences, hooks,
    and per layer the sequences' caches as attention_seqs takes them."""

    __slots__ = ("s", "pos", "seqs", "hooks", "kv_sets")


def _standalone(config, x):
    """A pass for calling a block or sublayer on its own: x's rows [T, d_model] are one new
    sequence at positions 0..T-1 with a KV cache of its own."""
    if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != config.hidden_size:
        got = x.shape if isinstance(x, Tensor) else type(x).__name__
        raise errors.ShapeError(f"expected a Tensor [tokens, {config.hidden_size}], got {got}")
    T = x.shape[0]
    p = _Pass()
    p.s = s = _Scratch(config, T)
    p.pos = Tensor((T,), "I32").load(list(range(T)))
    sq = _Seq()
    sq.b, sq.cache, sq.start, sq.t, sq.row0, sq.mask = 0, KVCache(config, T), 0, T, 0, None
    sq.q3, sq.k3, sq.v3, sq.z3, sq.pos = s.q3, s.k3, s.v3, s.z3, p.pos
    p.seqs, p.hooks = [sq], None
    p.kv_sets = _KVSets(p.seqs)
    return p


class _KVSets:
    """Layer i's caches of a pass's sequences in attention_seqs' form, made when layer i first
    asks (a pass that calls one block makes one)."""

    __slots__ = ("seqs", "sets")

    def __init__(self, seqs):
        self.seqs, self.sets = seqs, {}

    def __getitem__(self, i):
        kv = self.sets.get(i)
        if kv is None:
            q = self.seqs
            if len(q) == 1 and q[0].t == 1:  # a decode step of one sequence: its cache keeps the sets
                kv = q[0].cache.decode_kv_set(i)
            else:
                kv = F.KVSet([sq.t for sq in q], [sq.cache.k[i] for sq in q], [sq.cache.v[i] for sq in q])
            self.sets[i] = kv
        return kv


class LlamaModel(Module):
    """Implementation of the Llama model using C-Engine (SmolLM2, Llama 2/3, TinyLlama ...)."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size)
        self.layers = ModuleList([DecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        if not config.tie_word_embeddings:
            self.lm_head = Linear(config.hidden_size, config.vocab_size)
        self.unembed = Unembed(self)
        for m, path in [(self.embed_tokens, "embed"), (self.layers, "blocks"), (self.norm, "ln_final"),
                        (self.unembed, "unembed")]:
            m.hook_path = path
        if not config.tie_word_embeddings:
            self.lm_head.hook_path = "unembed.lm_head"
        for i, layer in enumerate(self.layers):
            layer.hook_path = f"blocks.{i}"
            for name, sub in layer.named_modules(f"blocks.{i}"):
                sub.hook_path = (name.replace(".self_attn", ".attn").replace(".input_layernorm", ".ln1")
                                 .replace(".post_attention_layernorm", ".ln2"))
        object.__setattr__(self, "hook_set", HookSet(hook_names_for(config.num_hidden_layers)))
        layouts = {n: (_adjacent_to_hf, _hf_to_adjacent) for n in _QK_HOOKS} if config.rope_mode == "adjacent" else {}
        object.__setattr__(self, "_layouts", layouts)
        object.__setattr__(self, "tokenizer", None)
        object.__setattr__(self, "_lock", threading.RLock())

    # ---- weights ----
    @property
    def output_weight(self):
        return self.embed_tokens.weight if self.config.tie_word_embeddings else self.lm_head.weight

    def new_cache(self, capacity=None):
        c = self.config
        return KVCache(c, min(c.max_position_embeddings, 4096) if capacity is None else capacity)

    def _scratch(self, n):
        """Activation buffers for n rows, kept for small passes (allocating ~10 buffers per decoded
        token is measurable). Hooks never see them: they get copies."""
        if n > 64:
            return _Scratch(self.config, n)
        cache = self.__dict__.setdefault("_scratch_by_rows", {})
        s = cache.get(n)
        if s is None:
            if len(cache) >= 8:
                cache.clear()
            s = cache[n] = _Scratch(self.config, n)
        return s

    # ---- hooks (the user-facing registry with filters and contexts is toolkit.interp) ----
    def hook_names(self):
        """Every hook point's name, in the order a forward pass reaches them."""
        return list(self.hook_set.names)

    def hook_nbytes(self, names, n_tokens):
        """Bytes the activations at `names` take for one new sequence of n_tokens (what
        run_with_cache keeps): attention scores and patterns grow with n_tokens squared."""
        c = self.config
        dims = {"pos": n_tokens, "q_pos": n_tokens, "k_pos": n_tokens, "d_model": c.hidden_size, "1": 1,
                "head": c.num_attention_heads, "kv_head": c.num_key_value_heads, "d_head": c.head_dim,
                "d_mlp": c.intermediate_size, "d_vocab": c.vocab_size}
        total = 0
        for name in names:
            shape = _HOOK_SHAPES[_LAYER_PREFIX.sub("blocks.{i}.", name)]
            total += 4 * math.prod(dims[d] for d in shape)  # hooks get F32 copies
        return total

    def add_hook(self, name, fn):
        """Registers fn(tensor, hook) on the hook point `name`; returns a handle with remove()."""
        return self.hook_set.add(name, fn)

    def remove_hooks(self, names=None):
        self.hook_set.clear(names)

    def _pass_hooks(self, seq_hooks, spans):
        """The hooks of a pass grouped by layer. Decode steps with the same registered hooks and
        the same seq_hooks lists reuse the last grouping (the key holds those lists, so their ids
        stay theirs)."""
        key = (self.hook_set.version, None if seq_hooks is None else tuple(seq_hooks),
               None if seq_hooks is None else tuple(len(h) if h else 0 for h in seq_hooks))
        last = self.__dict__.get("_last_pass_hooks")
        if last is not None and last[0][0] == key[0] and last[0][2] == key[2] and (
                last[0][1] is key[1] is None or (key[1] is not None and last[0][1] is not None and
                                                 all(a is b for a, b in zip(last[0][1], key[1])))):
            hk = last[1]
            hk.spans = spans
            return hk
        hk = PassHooks(self.hook_set, seq_hooks, spans, self.config.num_hidden_layers, self._layouts)
        if len(spans) == 1 and spans[0].rows == 1:  # only decode steps: a prompt's hooks are not kept alive
            self.__dict__["_last_pass_hooks"] = (key, hk)
        return hk

    # ---- forward ----
    def forward(self, input_ids, cache=None, logits="all"):
        """Runs new tokens of one sequence; returns logits [T, vocab] ("all"), [1, vocab] ("last"),
        or the final normalised hidden states [T, d_model] (logits=None).

        With a cache, the tokens continue the cached sequence and the cache grows by T.
        """
        ids = _as_id_list(input_ids, self.config.vocab_size)
        if cache is None:
            cache = self.new_cache(max(1, len(ids)))  # no ids: forward_batch says so
        return self.forward_batch([(ids, cache)], logits=logits)

    def close(self):
        """No pass starts after this (ClosedError): a generation running in another thread (a
        widget's) stops at its next token instead of running on after its model was closed. Waits
        for a pass running now; the weights stay with whoever still holds them."""
        with self._lock:
            self.__dict__["_closed"] = True

    def forward_batch(self, seqs, logits="last", seq_hooks=None):
        """One forward pass over several sequences: seqs is a list of (new token ids, KVCache).

        Returns logits for the last token of each sequence [B, vocab] ("last"), for every new token
        [sum T, vocab] ("all"), or the final normalised hidden states (None). seq_hooks, if given,
        has one entry per sequence: None or a list of (name, fn) hooks that see only that
        sequence's rows. Passes on one model run one at a time (they share activation buffers).
        """
        if seq_hooks is not None and (not isinstance(seq_hooks, (list, tuple)) or len(seq_hooks) != len(seqs)):
            raise errors.ArgumentTypeError(f"seq_hooks must be None or a list with one entry per sequence "
                                           f"({len(seqs)}), got {seq_hooks!r:.80}")
        with self._lock:
            if self.__dict__.get("_closed"):
                raise errors.ClosedError("the model was closed; load it again to use it")
            # a hook may call the model again (a probe, a second cache); that inner pass must not
            # reuse the buffers and hook grouping the outer pass is still using
            depth = self.__dict__.get("_depth", 0)
            self.__dict__["_depth"] = depth + 1
            try:
                return self._forward_batch(seqs, logits, seq_hooks, nested=depth > 0)
            finally:
                self.__dict__["_depth"] = depth

    def _forward_batch(self, seqs, logits, seq_hooks, nested=False):
        c = self.config
        if not seqs:
            raise errors.InvalidArgumentError("forward_batch needs at least one sequence")
        if len({id(cache) for _, cache in seqs}) != len(seqs):
            raise errors.InvalidArgumentError("each sequence in a batch needs its own KVCache")
        if logits not in ("all", "last", None):
            raise errors.InvalidArgumentError(f"logits must be 'all', 'last' or None, got {logits!r}")
        all_ids, positions, spans = [], [], []
        for b, (ids, cache) in enumerate(seqs):
            if not isinstance(cache, KVCache):
                raise errors.ArgumentTypeError(f"expected a KVCache, got {type(cache).__name__}")
            if not ids:
                raise errors.InvalidArgumentError("a sequence in the batch has no new tokens")
            if len(ids) > cache.free:
                raise errors.ContextLengthError(
                    f"{len(ids)} new tokens do not fit in a KV cache with {cache.free} free slots "
                    f"(capacity {cache.capacity}, context length {c.max_position_embeddings})")
            spans.append(Span(b, len(all_ids), len(ids), cache.length))
            positions.extend(range(cache.length, cache.length + len(ids)))
            all_ids.extend(ids)
        n = len(all_ids)
        p = _Pass()
        p.s = s = _Scratch(c, n) if nested else self._scratch(n)
        p.pos = Tensor((n,), "I32").load(positions)
        ids_t = Tensor((n,), "I32").load(all_ids)
        single = len(seqs) == 1
        p.seqs = []
        for sp, (_, cache) in zip(spans, seqs):       # views of each sequence's rows, made once per pass
            a, t = sp.row0, sp.rows
            sq = _Seq()
            sq.b, sq.cache, sq.start, sq.t, sq.row0, sq.mask = sp.seq, cache, sp.pos0, t, a, None
            sq.q3, sq.k3, sq.v3, sq.z3, sq.pos = ((s.q3, s.k3, s.v3, s.z3, p.pos) if single else
                                                  (s.q3[a:a + t], s.k3[a:a + t], s.v3[a:a + t], s.z3[a:a + t],
                                                   p.pos[a:a + t]))
            p.seqs.append(sq)
        p.kv_sets = _KVSets(p.seqs)
        hooked = self.hook_set.active or (seq_hooks and any(seq_hooks))
        p.hooks = hk = (None if not hooked else
                        PassHooks(self.hook_set, seq_hooks, spans, c.num_hidden_layers, self._layouts) if nested
                        else self._pass_hooks(seq_hooks, spans))
        top = hk.top if hk else None

        x = self.embed_tokens(ids_t, out=s.x)                             # [N, d_model]
        if top:
            top.fire("hook_embed", x)
        for layer in self.layers:
            layer(x, p)
        for sq in p.seqs:
            sq.cache.length += sq.t

        if logits == "last":
            if single:
                rows = x if n == 1 else x[n - 1:n]
            else:
                rows = Tensor((len(seqs), c.hidden_size))
                for b, sp in enumerate(spans):
                    rows[b:b + 1].copy_(x[sp.row0 + sp.rows - 1:sp.row0 + sp.rows])
            out_spans = [Span(sp.seq, b, 1, sp.pos0 + sp.rows - 1) for b, sp in enumerate(spans)]
        else:
            rows, out_spans = x, spans
        h = self.norm(rows)                                               # [rows, d_model]
        if top:
            _norm_hooks(top, "ln_final", self.norm, rows, h, out_spans)
        if logits is None:
            return h
        out = self.unembed(h)                                             # [rows, vocab]
        if top:
            top.fire("hook_logits", out, out_spans)
        return out

    # ---- generation ----
    def generate(self, input_ids, max_new_tokens: int = 100, **sampling):
        """Autoregressive generation: returns a Tensor [1, n_new] of new token ids (I32).

        Sampling settings are those of toolkit.common.generation.SamplingParams.
        """
        from ...common.generation import SamplingParams, generate_ids

        params = SamplingParams(max_new_tokens=max_new_tokens, **sampling)
        new = list(generate_ids(self, _as_id_list(input_ids, self.config.vocab_size), params))
        out = Tensor((1, len(new)), "I32")
        return out.load(new) if new else out


def _as_id_list(input_ids, vocab_size=None):
    """Token ids from a Tensor (any shape; float ids as in the plugin guide) or a sequence of ints,
    each in 0..vocab_size-1 when vocab_size is given."""
    return validate.token_ids(input_ids, vocab_size)


as_id_list = _as_id_list  # public name for the layers above (toolkit.interp)
