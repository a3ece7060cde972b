"""LlamaConfig: the hyper-parameters of a Llama-family model, read from HF config.json or GGUF metadata."""
from dataclasses import asdict, dataclass, field, fields
from typing import List, Optional

import math

from toolkit import errors

# Dimensions cross into the engine as int32; tensors of this size could not be in a file anyway.
MAX_DIM = 2**31 - 1


def _check_int(name, v, lo, hi):
    if isinstance(v, bool) or not isinstance(v, int):
        raise errors.FormatError(f"config: {name} must be an int, got {type(v).__name__} {v!r:.40}")
    if not lo <= v <= hi:
        raise errors.FormatError(f"config: {name} must be in {lo}..{hi}, got {v}")
    return v


def _check_float(name, v, lo, hi):
    """lo < v <= hi, finite; ints are accepted (JSON writes 10000.0 as 10000)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise errors.FormatError(f"config: {name} must be a number, got {type(v).__name__} {v!r:.40}")
    if isinstance(v, int) and abs(v) > 2**1023:
        raise errors.FormatError(f"config: {name} = {v} is out of range")
    if not math.isfinite(v) or not lo < v <= hi:
        raise errors.FormatError(f"config: {name} must be finite and in ({lo}, {hi:g}], got {v!r}")
    return float(v)


def _field(src, key, kind, default=..., where="config.json"):
    """src[key] of the given kind: "int" (not bool), "float" (int or float), "bool"; no coercion
    of strings or other types (a "576" is a broken file, not 576)."""
    if key not in src or src[key] is None:
        if default is ...:
            raise errors.FormatError(f"{where}: {key} is missing")
        return default
    v = src[key]
    ok = {"int": isinstance(v, int) and not isinstance(v, bool),
          "float": isinstance(v, (int, float)) and not isinstance(v, bool),
          "f32": isinstance(v, float),  # GGUF metadata is typed: a float field stored as an int is broken
          "bool": isinstance(v, bool)}[kind]
    if not ok:
        raise errors.FormatError(f"{where}: {key} must be {'an' if kind == 'int' else 'a'} "
                                 f"{'float' if kind == 'f32' else kind}, "
                                 f"got {type(v).__name__} {v!r:.40}")
    return v


@dataclass
class LlamaConfig:
    # Defaults are SmolLM2-135M-Instruct's, the toolkit's default model.
    vocab_size: int = 49152
    hidden_size: int = 576
    intermediate_size: int = 1536
    num_hidden_layers: int = 30
    num_attention_heads: int = 9
    num_key_value_heads: int = 3
    head_dim: int = 64
    max_position_embeddings: int = 8192
    rms_norm_eps: float = 1e-5
    rope_theta: float = 100000.0
    # "half" rotates (i, i + d/2) as HF checkpoints expect; "adjacent" rotates (2i, 2i+1), which is
    # what GGUF's permuted Q/K rows expect. Attention scores are identical either way.
    rope_mode: str = "half"
    tie_word_embeddings: bool = True
    bos_token_id: Optional[int] = 1
    eos_token_id: List[int] = field(default_factory=lambda: [2])
    # Plugin settings (the guide's initialize(**kwargs) writes these): where to load from, threads.
    model: str = "smollm2-135m-instruct"
    threads: Optional[int] = None
    # KV cache storage: F32 reproduces fp32 references exactly; F16 halves the cache's memory and the
    # bytes attention reads per token (what llama.cpp does by default), at ~1e-3 relative error.
    kv_cache_dtype: str = "F32"

    def __post_init__(self):
        self.validate()

    # Settings that are not part of the architecture: the only fields a caller may set at load time
    # (everything else is read from the weight file, and overriding it would contradict the weights).
    RUNTIME_FIELDS = ("model", "threads", "kv_cache_dtype")

    def validate(self):
        """Checks every field's type, finiteness and range; FormatError naming the field."""
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings"):
            _check_int(name, getattr(self, name), 1, MAX_DIM)
        if self.num_attention_heads % self.num_key_value_heads:
            raise errors.FormatError(
                f"config: num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})")
        if self.head_dim % 2:
            raise errors.FormatError(f"config: head_dim must be even for RoPE, got {self.head_dim}")
        if self.kv_cache_dtype not in ("F32", "F16"):
            raise errors.FormatError(f"config: kv_cache_dtype must be 'F32' or 'F16', got {self.kv_cache_dtype!r}")
        if self.rope_mode not in ("half", "adjacent"):
            raise errors.FormatError(f"config: rope_mode must be 'half' or 'adjacent', got {self.rope_mode!r}")
        # eps outside (0, 1) and theta <= 1 give NaN or meaningless rotations; 1e12 is far above any
        # published model's base (Llama 3: 5e5) yet keeps theta^(-2i/d) representable.
        _check_float("rms_norm_eps", self.rms_norm_eps, 0.0, 0.5)
        _check_float("rope_theta", self.rope_theta, 1.0, 1e12)
        if not isinstance(self.tie_word_embeddings, bool):
            raise errors.FormatError(
                f"config: tie_word_embeddings must be true or false, got {self.tie_word_embeddings!r}")
        if isinstance(self.eos_token_id, int) and not isinstance(self.eos_token_id, bool):
            self.eos_token_id = [self.eos_token_id]
        if not isinstance(self.eos_token_id, list):
            raise errors.FormatError(f"config: eos_token_id must be an int or a list of ints, got {self.eos_token_id!r}")
        for i in self.eos_token_id:
            _check_int("eos_token_id", i, 0, self.vocab_size - 1)
        if self.bos_token_id is not None:
            _check_int("bos_token_id", self.bos_token_id, 0, self.vocab_size - 1)
        if not isinstance(self.model, str):
            raise errors.ArgumentTypeError(f"config: model must be a name or path string, got {self.model!r}")
        if self.threads is not None:
            if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1:
                raise errors.InvalidArgumentError(f"threads must be a positive int or None, got {self.threads!r}")

    @property
    def q_dim(self):
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self):
        return self.num_key_value_heads * self.head_dim

    @classmethod
    def from_hf(cls, cfg: dict):
        """From a Hugging Face config.json dict (LlamaForCausalLM and close relatives)."""
        archs = cfg.get("architectures") or []
        if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
            raise errors.FormatError(f"config.json: architectures must be a list of strings, got {archs!r:.60}")
        if not isinstance(cfg.get("model_type"), (str, type(None))):
            raise errors.FormatError(f"config.json: model_type must be a string, got {cfg['model_type']!r:.60}")
        if cfg.get("model_type") not in (None, "llama", "mistral", "smollm", "smollm2") and \
                not any("Llama" in a for a in archs):
            raise errors.UnsupportedError(f"config.json: model_type {cfg.get('model_type')!r:.60} is not a Llama-family model")
        if cfg.get("rope_scaling"):
            raise errors.UnsupportedError(f"config.json: rope_scaling {cfg['rope_scaling']!r:.100} is not supported")
        heads = _check_int("num_attention_heads", _field(cfg, "num_attention_heads", "int"), 1, MAX_DIM)
        hidden = _check_int("hidden_size", _field(cfg, "hidden_size", "int"), 1, MAX_DIM)
        eos = cfg.get("eos_token_id", 2)
        if eos is None:
            eos = []
        return cls(
            vocab_size=_field(cfg, "vocab_size", "int"),
            hidden_size=hidden,
            intermediate_size=_field(cfg, "intermediate_size", "int"),
            num_hidden_layers=_field(cfg, "num_hidden_layers", "int"),
            num_attention_heads=heads,
            num_key_value_heads=_field(cfg, "num_key_value_heads", "int", heads),
            head_dim=_field(cfg, "head_dim", "int", hidden // heads),
            max_position_embeddings=_field(cfg, "max_position_embeddings", "int", 2048),
            rms_norm_eps=_field(cfg, "rms_norm_eps", "float", 1e-6),
            rope_theta=_field(cfg, "rope_theta", "float", 10000.0),
            rope_mode="half",
            tie_word_embeddings=_field(cfg, "tie_word_embeddings", "bool", False),
            bos_token_id=_field(cfg, "bos_token_id", "int", None),
            eos_token_id=list(eos) if isinstance(eos, (list, tuple)) else [eos],
        )

    @classmethod
    def from_gguf(cls, md: dict, has_output_weight: bool):
        """From GGUF metadata (general.architecture == 'llama')."""
        arch = md.get("general.architecture")
        if arch != "llama":
            raise errors.UnsupportedError(f"GGUF architecture {arch!r:.60} is not supported (only 'llama')")
        if md.get("llama.rope.scaling.type") not in (None, "none"):
            raise errors.UnsupportedError(f"GGUF rope scaling {md['llama.rope.scaling.type']!r:.60} is not supported")
        w = "GGUF metadata"
        heads = _check_int("llama.attention.head_count", _field(md, "llama.attention.head_count", "int", where=w),
                           1, MAX_DIM)
        hidden = _check_int("llama.embedding_length", _field(md, "llama.embedding_length", "int", where=w),
                            1, MAX_DIM)
        head_dim = _field(md, "llama.attention.key_length", "int", hidden // heads, where=w)
        n_rot = _field(md, "llama.rope.dimension_count", "int", head_dim, where=w)
        if n_rot != head_dim:
            raise errors.UnsupportedError(f"GGUF: partial rotary ({n_rot} of {head_dim} dims) is not supported")
        if "llama.vocab_size" in md:
            vocab = _field(md, "llama.vocab_size", "int", where=w)
        else:
            tokens = md.get("tokenizer.ggml.tokens")
            if not isinstance(tokens, list):
                raise errors.FormatError(f"{w}: neither llama.vocab_size nor a tokenizer.ggml.tokens list")
            vocab = len(tokens)
        eos = _field(md, "tokenizer.ggml.eos_token_id", "int", None, where=w)
        return cls(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=_field(md, "llama.feed_forward_length", "int", where=w),
            num_hidden_layers=_field(md, "llama.block_count", "int", where=w),
            num_attention_heads=heads,
            num_key_value_heads=_field(md, "llama.attention.head_count_kv", "int", heads, where=w),
            head_dim=head_dim,
            max_position_embeddings=_field(md, "llama.context_length", "int", 2048, where=w),
            rms_norm_eps=_field(md, "llama.attention.layer_norm_rms_epsilon", "f32", 1e-5, where=w),
            rope_theta=_field(md, "llama.rope.freq_base", "f32", 10000.0, where=w),
            rope_mode="adjacent",
            tie_word_embeddings=not has_output_weight,
            bos_token_id=_field(md, "tokenizer.ggml.bos_token_id", "int", None, where=w),
            eos_token_id=[] if eos is None else [eos],
        )

    def to_hf(self) -> dict:
        """A Hugging Face config.json dict (LlamaForCausalLM)."""
        eos = self.eos_token_id[0] if len(self.eos_token_id) == 1 else list(self.eos_token_id)
        return {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size, "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads, "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim, "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps, "rope_theta": self.rope_theta, "rope_scaling": None,
            "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
            "tie_word_embeddings": self.tie_word_embeddings, "bos_token_id": self.bos_token_id,
            "eos_token_id": eos, "torch_dtype": "float32",
        }

    def to_dict(self):
        return asdict(self)

    @classmethod
    def field_names(cls):
        return {f.name for f in fields(cls)}
