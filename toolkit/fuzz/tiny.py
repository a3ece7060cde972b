"""A tiny synthetic Llama model (a few hundred KB) written with the project's own writers.

The fuzzer mutates these files instead of the 100 MB default model so each case loads in
milliseconds; the tests use them to build broken files on purpose. The weights are random but
finite, the tokenizer is a real byte-level BPE vocabulary of 70 tokens, and the file exercises
every weight dtype the loader maps (F32, F16, Q8_0, Q4_0, Q4_1 in GGUF; F32, F16, BF16 in HF).
"""
from __future__ import annotations

import json
import os
import random

from toolkit.common.loaders.ggml_types import GGML_TYPE_IDS
from toolkit.common.loaders.gguf_write import gguf_bytes
from toolkit.common.loaders.safetensors_io import save_safetensors
from toolkit.core.engine.backend import Tensor

VOCAB_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# GPT-2 byte-level symbols: printable ASCII maps to itself, the space to "Ġ".
VOCAB = VOCAB_SPECIALS + list("abcdefghijklmnopqrstuvwxyz") + list("ABCDEFGHIJKLMNOPQRSTUVWXYZ") \
    + list("0123456789") + ["Ġ", ".", ",", "Ġa", "Ġt", "th"]
MERGES = ["Ġ a", "Ġ t", "t h"]

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN, LAYERS, CTX = 64, 2, 1, 32, 96, 2, 256

# parameter suffix -> (GGUF name, GGUF dtype, shape outermost first)
_LAYER = [
    ("attn_norm.weight", "F32", (HIDDEN,)),
    ("attn_q.weight", "Q4_1", (HEADS * HEAD_DIM, HIDDEN)),
    ("attn_k.weight", "Q4_0", (KV_HEADS * HEAD_DIM, HIDDEN)),
    ("attn_v.weight", "Q8_0", (KV_HEADS * HEAD_DIM, HIDDEN)),
    ("attn_output.weight", "F16", (HIDDEN, HEADS * HEAD_DIM)),
    ("ffn_norm.weight", "F32", (HIDDEN,)),
    ("ffn_gate.weight", "Q4_1", (FFN, HIDDEN)),
    ("ffn_up.weight", "F16", (FFN, HIDDEN)),
    ("ffn_down.weight", "Q8_0", (HIDDEN, FFN)),
]


def _values(rng, n, norm=False):
    if norm:
        return [1.0 + rng.uniform(-0.1, 0.1) for _ in range(n)]
    return [rng.gauss(0.0, 0.08) for _ in range(n)]


def _raw(shape, dtype, rng, norm=False):
    n = 1
    for d in shape:
        n *= d
    t = Tensor.from_list(_values(rng, n, norm), shape=shape, dtype=dtype)
    return bytes(t.memoryview().cast("B"))


def gguf_tensors(seed=0, tied=True):
    """name -> (ggml type id, GGUF shape (ne[0] first), bytes)."""
    rng = random.Random(seed)
    out = {}

    def add(name, dtype, shape, norm=False):
        out[name] = (GGML_TYPE_IDS[dtype], tuple(reversed(shape)), _raw(shape, dtype, rng, norm))

    add("token_embd.weight", "Q8_0", (len(VOCAB), HIDDEN))
    for i in range(LAYERS):
        for suffix, dtype, shape in _LAYER:
            add(f"blk.{i}.{suffix}", dtype, shape, norm=suffix.endswith("norm.weight"))
    add("output_norm.weight", "F32", (HIDDEN,), norm=True)
    if not tied:
        add("output.weight", "F16", (len(VOCAB), HIDDEN))
    return out


def gguf_metadata():
    return {
        "general.architecture": "llama",
        "general.name": "tiny-fuzz",
        "llama.context_length": CTX,
        "llama.embedding_length": HIDDEN,
        "llama.block_count": LAYERS,
        "llama.feed_forward_length": FFN,
        "llama.rope.dimension_count": HEAD_DIM,
        "llama.attention.head_count": HEADS,
        "llama.attention.head_count_kv": KV_HEADS,
        "llama.attention.layer_norm_rms_epsilon": 1e-5,
        "llama.rope.freq_base": 10000.0,
        "llama.vocab_size": len(VOCAB),
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "smollm",
        "tokenizer.ggml.tokens": list(VOCAB),
        "tokenizer.ggml.token_type": [3] * len(VOCAB_SPECIALS) + [1] * (len(VOCAB) - len(VOCAB_SPECIALS)),
        "tokenizer.ggml.merges": list(MERGES),
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
    }


def tiny_gguf_bytes(seed=0, tied=True, metadata=None, **kw):
    """The complete GGUF file; `metadata` entries replace (or, as None, remove) the defaults."""
    md = gguf_metadata()
    for k, v in (metadata or {}).items():
        if v is None:
            md.pop(k, None)
        else:
            md[k] = v
    return gguf_bytes(md, gguf_tensors(seed, tied), **kw)


def write_tiny_gguf(path, seed=0, **kw):
    with open(path, "wb") as f:
        f.write(tiny_gguf_bytes(seed, **kw))
    return str(path)


_HF_NAMES = {
    "attn_norm.weight": "input_layernorm.weight", "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight", "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_HF_DTYPES = {"F32": "F32", "Q4_1": "BF16", "Q4_0": "F32", "Q8_0": "F16", "F16": "F16"}


def hf_config():
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": len(VOCAB),
        "hidden_size": HIDDEN, "intermediate_size": FFN, "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM,
        "max_position_embeddings": CTX, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2,
    }


def hf_tensors(seed=0):
    """HF name -> (dtype, shape, bytes)."""
    rng = random.Random(seed)
    out = {}

    def add(name, dtype, shape, norm=False):
        out[name] = (dtype, shape, _raw(shape, dtype, rng, norm))

    add("model.embed_tokens.weight", "F16", (len(VOCAB), HIDDEN))
    for i in range(LAYERS):
        for suffix, gdtype, shape in _LAYER:
            add(f"model.layers.{i}.{_HF_NAMES[suffix]}", _HF_DTYPES[gdtype], shape,
                norm=suffix.endswith("norm.weight"))
    add("model.norm.weight", "F32", (HIDDEN,), norm=True)
    return out


def write_tiny_hf_dir(directory, seed=0, config=None):
    """config.json, model.safetensors, tokenizer.json (+ tokenizer_config.json) in `directory`."""
    from toolkit.common.tokenizers.gguf_vocab import from_gguf

    os.makedirs(directory, exist_ok=True)
    cfg = hf_config()
    cfg.update(config or {})
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(cfg, f)
    save_safetensors(os.path.join(directory, "model.safetensors"), hf_tensors(seed))
    from_gguf(gguf_metadata()).save(directory)
    return str(directory)
