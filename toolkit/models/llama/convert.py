"""Convert a Llama GGUF file into a Hugging Face model directory.

Writes config.json, model.safetensors (F32 or BF16, dequantised by the engine), tokenizer.json,
tokenizer_config.json (with the chat template) and generation_config.json, readable by our loader
and by any HF-format tool. GGUF's Q/K rows are permuted back to the HF rotate-half layout.
"""
import json
import os

from toolkit import errors

from ...common.atomic import atomic_write
from ...common.loaders.safetensors_io import save_safetensors
from ...common.tokenizers.gguf_vocab import from_gguf
from ...core.engine.backend import Tensor
from .weights import HF_PREFIX, load_gguf

OUT_DTYPES = ("F32", "BF16")


def unpermute_rope_rows(w: Tensor, n_heads: int) -> Tensor:
    """GGUF -> HF row order of a Q or K weight [n_heads * D, K] (F32).

    GGUF row 2i+j of a head holds HF row j*D/2+i; a strided view [H, 2, D/2, K] of the GGUF rows
    copied contiguous is exactly the HF layout, in one engine call.
    """
    rows, k = w.shape
    d = rows // n_heads
    if rows % n_heads or d % 2:
        raise errors.ShapeError(f"cannot split {rows} rows into {n_heads} heads of even size")
    row = k * 4
    src = w._view((n_heads, 2, d // 2, k), (d * row, row, 2 * row, 4), 0)
    out = Tensor((n_heads, 2, d // 2, k))
    out.copy_(src)
    return out.reshape(rows, k)


def convert_gguf_to_hf(src, out_dir, dtype="F32"):
    """Writes an HF directory for the GGUF file `src`; returns the list of files written."""
    dtype = dtype.upper()
    if dtype not in OUT_DTYPES:
        raise errors.InvalidArgumentError(f"output dtype must be one of {OUT_DTYPES}, got {dtype!r}")
    config, state, md, weights = load_gguf(src)
    try:
        tokenizer = from_gguf(md)
        tensors = {}
        for name, w in state.items():
            t = w.to("F32")
            if name.endswith("self_attn.q_proj.weight"):
                t = unpermute_rope_rows(t, config.num_attention_heads)
            elif name.endswith("self_attn.k_proj.weight"):
                t = unpermute_rope_rows(t, config.num_key_value_heads)
            if dtype != "F32":
                t = t.to(dtype)
            hf_name = name if name.startswith("lm_head.") else HF_PREFIX + name
            tensors[hf_name] = (dtype, t.shape, t.memoryview())
        os.makedirs(out_dir, exist_ok=True)
        config.rope_mode = "half"
        save_safetensors(os.path.join(out_dir, "model.safetensors"), tensors, metadata={"format": "pt"})
        tensors = None
    finally:
        state = None
        weights.close()
    cfg = config.to_hf()
    _write_json(os.path.join(out_dir, "config.json"), cfg)
    gen = {"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"]}
    if tokenizer.pad_id is not None:
        gen["pad_token_id"] = tokenizer.pad_id
    _write_json(os.path.join(out_dir, "generation_config.json"), gen)
    tokenizer.save(out_dir)
    return sorted(os.listdir(out_dir))


def _write_json(path, obj):
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
