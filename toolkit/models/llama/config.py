"""LlamaConfig: the hyper-parameters of a Llama-family model, read from HF config.json or GGUF metadata."""
from dataclasses import asdict, dataclass, field, fields
from typing import List, Optional

from toolkit import errors


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

    def validate(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise errors.FormatError(f"config: {name} must be a positive int, got {v!r}")
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
        if not self.rms_norm_eps > 0 or not self.rope_theta > 0:
            raise errors.FormatError("config: rms_norm_eps and rope_theta must be positive")
        if isinstance(self.eos_token_id, int):
            self.eos_token_id = [self.eos_token_id]

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
        if cfg.get("model_type") not in (None, "llama", "mistral", "smollm", "smollm2") and \
                not any("Llama" in a for a in archs):
            raise errors.UnsupportedError(f"config.json: model_type {cfg.get('model_type')!r} is not a Llama-family model")
        if cfg.get("rope_scaling"):
            raise errors.UnsupportedError(f"config.json: rope_scaling {cfg['rope_scaling']!r} is not supported")
        try:
            heads = int(cfg["num_attention_heads"])
            hidden = int(cfg["hidden_size"])
            eos = cfg.get("eos_token_id", 2)
            return cls(
                vocab_size=int(cfg["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(cfg["intermediate_size"]),
                num_hidden_layers=int(cfg["num_hidden_layers"]),
                num_attention_heads=heads,
                num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
                head_dim=int(cfg.get("head_dim") or hidden // heads),
                max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
                rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
                rope_theta=float(cfg.get("rope_theta", 10000.0)),
                rope_mode="half",
                tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                bos_token_id=cfg.get("bos_token_id"),
                eos_token_id=list(eos) if isinstance(eos, (list, tuple)) else [eos],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise errors.FormatError(f"config.json is missing or has a bad field: {exc!r}") from exc

    @classmethod
    def from_gguf(cls, md: dict, has_output_weight: bool):
        """From GGUF metadata (general.architecture == 'llama')."""
        arch = md.get("general.architecture")
        if arch != "llama":
            raise errors.UnsupportedError(f"GGUF architecture {arch!r} is not supported (only 'llama')")
        if md.get("llama.rope.scaling.type") not in (None, "none"):
            raise errors.UnsupportedError(f"GGUF rope scaling {md['llama.rope.scaling.type']!r} is not supported")
        try:
            heads = int(md["llama.attention.head_count"])
            hidden = int(md["llama.embedding_length"])
            n_rot = int(md.get("llama.rope.dimension_count", hidden // heads))
            tokens = md.get("tokenizer.ggml.tokens")
            vocab = int(md.get("llama.vocab_size") or len(tokens))
            head_dim = int(md.get("llama.attention.key_length", hidden // heads))
            if n_rot != head_dim:
                raise errors.UnsupportedError(f"GGUF: partial rotary ({n_rot} of {head_dim} dims) is not supported")
            eos = md.get("tokenizer.ggml.eos_token_id")
            return cls(
                vocab_size=vocab,
                hidden_size=hidden,
                intermediate_size=int(md["llama.feed_forward_length"]),
                num_hidden_layers=int(md["llama.block_count"]),
                num_attention_heads=heads,
                num_key_value_heads=int(md.get("llama.attention.head_count_kv", heads)),
                head_dim=head_dim,
                max_position_embeddings=int(md.get("llama.context_length", 2048)),
                rms_norm_eps=float(md.get("llama.attention.layer_norm_rms_epsilon", 1e-5)),
                rope_theta=float(md.get("llama.rope.freq_base", 10000.0)),
                rope_mode="adjacent",
                tie_word_embeddings=not has_output_weight,
                bos_token_id=md.get("tokenizer.ggml.bos_token_id"),
                eos_token_id=[] if eos is None else [int(eos)],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise errors.FormatError(f"GGUF metadata is missing or has a bad llama field: {exc!r}") from exc

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
