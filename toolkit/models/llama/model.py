"""LlamaModel: the Llama-family decoder (GQA attention, SwiGLU MLP, RMSNorm, RoPE) on the C engine.

The forward pass takes a *batch of sequences*, each with its own KVCache, and runs every matmul once
over all their new tokens stacked as rows; only attention is per sequence. Each op is a separate
engine call, and between ops sits a named hook point (TransformerLens names). With no hooks
registered a hook point costs one truthiness test. Hooks may return a replacement tensor, which then
flows on through the computation.
"""
import logging
import threading

from toolkit import errors

from ...common import validate
from ...core.engine import functional as F
from ...core.engine.backend import Embedding, Linear, Module, ModuleList, RMSNorm, Tensor
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

    def truncate(self, length):
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


class LlamaAttention(Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.q_proj = Linear(config.hidden_size, config.q_dim)
        self.k_proj = Linear(config.hidden_size, config.kv_dim)
        self.v_proj = Linear(config.hidden_size, config.kv_dim)
        self.o_proj = Linear(config.q_dim, config.hidden_size)


class LlamaMLP(Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.gate_proj = Linear(config.hidden_size, config.intermediate_size)
        self.up_proj = Linear(config.hidden_size, config.intermediate_size)
        self.down_proj = Linear(config.intermediate_size, config.hidden_size)


class DecoderLayer(Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.self_attn = LlamaAttention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = LlamaMLP(config)


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


class LlamaModel(Module):
    """Implementation of the Llama model using C-Engine (SmolLM2, Llama 2/3, TinyLlama ...)."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size)
        self.layers = ModuleList([DecoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        if not config.tie_word_embeddings:
            self.lm_head = Linear(config.hidden_size, config.vocab_size)
        # name -> list of fn(tensor, name) -> None | Tensor; see toolkit hooks. Empty: zero cost.
        object.__setattr__(self, "hooks", {})
        object.__setattr__(self, "tokenizer", None)
        object.__setattr__(self, "_lock", threading.RLock())

    # ---- weights ----
    @property
    def output_weight(self):
        return self.embed_tokens.weight if self.config.tie_word_embeddings else self.lm_head.weight

    def new_cache(self, capacity=None):
        c = self.config
        return KVCache(c, capacity or min(c.max_position_embeddings, 4096))

    def _scratch(self, n, reuse):
        """Activation buffers for n rows. Decode passes reuse theirs (allocating ~10 buffers per
        token is measurable); with hooks registered every pass gets fresh ones, so tensors a hook
        kept are never overwritten by a later pass."""
        if not reuse or n > 64:
            return _Scratch(self.config, n)
        cache = self.__dict__.setdefault("_scratch_by_rows", {})
        s = cache.get(n)
        if s is None:
            if len(cache) >= 8:
                cache.clear()
            s = cache[n] = _Scratch(self.config, n)
        return s

    # ---- hooks ----
    def _fire(self, name, t):
        for fn in self.hooks.get(name, ()):
            r = fn(t, name)
            if r is not None:
                if not isinstance(r, Tensor) or r.shape != t.shape:
                    raise errors.ShapeError(f"hook {name} must return None or a Tensor of shape {t.shape}")
                if r is not t:
                    t.copy_(r)  # edits flow back into the buffer the next op reads
        return t

    # ---- forward ----
    def forward(self, input_ids, cache=None, logits="all"):
        """Runs new tokens of one sequence; returns logits [T, vocab] ("all"), [1, vocab] ("last"),
        or the final normalised hidden states [T, d_model] (logits=None).

        With a cache, the tokens continue the cached sequence and the cache grows by T.
        """
        ids = _as_id_list(input_ids)
        if cache is None:
            cache = self.new_cache(len(ids))
        return self.forward_batch([(ids, cache)], logits=logits)

    def forward_batch(self, seqs, logits="last"):
        """One forward pass over several sequences: seqs is a list of (new token ids, KVCache).

        Returns logits for the last token of each sequence [B, vocab] ("last"), for every new token
        [sum T, vocab] ("all"), or the final normalised hidden states (None). Passes on one model
        run one at a time (they share activation buffers).
        """
        with self._lock:
            return self._forward_batch(seqs, logits)

    def _forward_batch(self, seqs, logits):
        c = self.config
        if not seqs:
            raise errors.InvalidArgumentError("forward_batch needs at least one sequence")
        if len({id(cache) for _, cache in seqs}) != len(seqs):
            raise errors.InvalidArgumentError("each sequence in a batch needs its own KVCache")
        all_ids, positions, spans = [], [], []
        for ids, cache in seqs:
            if not isinstance(cache, KVCache):
                raise errors.ArgumentTypeError(f"expected a KVCache, got {type(cache).__name__}")
            if not ids:
                raise errors.InvalidArgumentError("a sequence in the batch has no new tokens")
            if len(ids) > cache.free:
                raise errors.ContextLengthError(
                    f"{len(ids)} new tokens do not fit in a KV cache with {cache.free} free slots "
                    f"(capacity {cache.capacity}, context length {c.max_position_embeddings})")
            spans.append((len(all_ids), len(ids), cache.length))
            positions.extend(range(cache.length, cache.length + len(ids)))
            all_ids.extend(ids)
        n = len(all_ids)
        ids_t = Tensor((n,), "I32").load(all_ids)
        pos_t = Tensor((n,), "I32").load(positions)
        hooks = self.hooks
        s = self._scratch(n, reuse=not hooks)
        D = c.head_dim
        scale = D ** -0.5
        # per-sequence views of the scratch rows, made once and reused by every layer
        per_seq = []
        for (a, t, start), (_, cache) in zip(spans, seqs):
            single = len(seqs) == 1
            per_seq.append((
                cache, start, t,
                s.q3 if single else s.q3[a:a + t],
                s.k3 if single else s.k3[a:a + t],
                s.v3 if single else s.v3[a:a + t],
                s.z3 if single else s.z3[a:a + t],
                pos_t if single else pos_t[a:a + t],
            ))
        want_pattern = hooks and any(k.endswith("attn.hook_pattern") for k in hooks)

        x = F.embedding(self.embed_tokens.weight, ids_t, out=s.x)         # [N, d_model]
        if hooks:
            x = self._fire("hook_embed", x)
        for i, layer in enumerate(self.layers):
            attn, mlp = layer.self_attn, layer.mlp
            pre = f"blocks.{i}." if hooks else ""
            if hooks:
                self._fire(pre + "hook_resid_pre", x)
            h = F.rms_norm(x, layer.input_layernorm.weight, c.rms_norm_eps, out=s.h)
            if hooks:
                self._fire(pre + "ln1.hook_normalized", h)
            # q [N, H*D], k and v [N, Hkv*D]: one engine call, so a decode step starts the threads
            # once for the three (bit-identical to three matmuls)
            F.matmul_n(h, [attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight], outs=s.qkv)
            if hooks:
                self._fire(pre + "attn.hook_q", s.q3)
                self._fire(pre + "attn.hook_k", s.k3)
                self._fire(pre + "attn.hook_v", s.v3)
            F.rope_(s.q3, pos_t, D, c.rope_theta, mode=c.rope_mode)
            F.rope_(s.k3, pos_t, D, c.rope_theta, mode=c.rope_mode)
            if hooks:
                self._fire(pre + "attn.hook_rot_q", s.q3)
                self._fire(pre + "attn.hook_rot_k", s.k3)
            for cache, start, t, q3, k3, v3, z3, p in per_seq:
                kc, vc = cache.k[i], cache.v[i]
                F.copy_rows_(kc, start, k3)                              # append to the cache
                F.copy_rows_(vc, start, v3)
                if want_pattern and (pre + "attn.hook_pattern") in hooks:
                    _, probs = F.scaled_dot_product_attention(q3, kc, vc, p, start + t, scale, out=z3,
                                                              return_probs=True)
                    self._fire(pre + "attn.hook_pattern", probs)          # [H, T, n_kv]
                else:
                    F.scaled_dot_product_attention(q3, kc, vc, p, start + t, scale, out=z3)
            if hooks:
                self._fire(pre + "attn.hook_z", s.z3)
            F.matmul(s.z, attn.o_proj.weight, out=s.o)
            if hooks:
                self._fire(pre + "hook_attn_out", s.o)
            F.add(x, s.o, out=x)
            if hooks:
                self._fire(pre + "hook_resid_mid", x)
            h = F.rms_norm(x, layer.post_attention_layernorm.weight, c.rms_norm_eps, out=s.h)
            if hooks:
                self._fire(pre + "ln2.hook_normalized", h)
            F.matmul_n(h, [mlp.gate_proj.weight, mlp.up_proj.weight], outs=s.gate_up)  # [N, d_mlp] each
            if hooks:
                self._fire(pre + "mlp.hook_pre", s.gate)
                self._fire(pre + "mlp.hook_pre_linear", s.up)
            act = F.silu_mul(s.gate, s.up, out=s.gate)
            if hooks:
                self._fire(pre + "mlp.hook_post", act)
            F.matmul(act, mlp.down_proj.weight, out=s.o)
            if hooks:
                self._fire(pre + "hook_mlp_out", s.o)
            F.add(x, s.o, out=x)
            if hooks:
                self._fire(pre + "hook_resid_post", x)
        for (_, t, _), (_, cache) in zip(spans, seqs):
            cache.length += t

        if logits == "last":
            if len(seqs) == 1:
                rows = x if n == 1 else x[n - 1:n]
            else:
                rows = Tensor((len(seqs), c.hidden_size))
                for b, (a, t, _) in enumerate(spans):
                    rows[b:b + 1].copy_(x[a + t - 1:a + t])
        elif logits in ("all", None):
            rows = x
        else:
            raise errors.InvalidArgumentError(f"logits must be 'all', 'last' or None, got {logits!r}")
        h = F.rms_norm(rows, self.norm.weight, c.rms_norm_eps)
        if hooks:
            h = self._fire("ln_final.hook_normalized", h)
        if logits is None:
            return h
        return F.matmul(h, self.output_weight)                           # [rows, vocab]

    # ---- generation ----
    def generate(self, input_ids, max_new_tokens: int = 100, **sampling):
        """Autoregressive generation: returns a Tensor [1, n_new] of new token ids (I32).

        Sampling settings are those of toolkit.common.generation.SamplingParams.
        """
        from ...common.generation import SamplingParams, generate_ids

        params = SamplingParams(max_new_tokens=max_new_tokens, **sampling)
        new = list(generate_ids(self, _as_id_list(input_ids), params))
        out = Tensor((1, len(new)), "I32")
        return out.load(new) if new else out


def _as_id_list(input_ids):
    """Token ids from a Tensor (any shape; float ids as in the plugin guide) or a sequence of ints."""
    return validate.token_ids(input_ids)
