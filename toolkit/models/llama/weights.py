"""Loading Llama weights, zero-copy, from a GGUF file or a Hugging Face safetensors directory.

Weight tensors borrow the file's copy-on-write mmap in the dtype the file stores (Q4_1 stays
Q4_1); nothing is copied or dequantised at load time, and a weight edited in place (an ablation)
changes this model only, never the file. The name tables below are the one place that maps
each format's tensor names to the module's parameter names.

GGUF stores Llama Q/K rows permuted so that RoPE rotates adjacent pairs; we keep that layout and run
RoPE in "adjacent" mode (config.rope_mode), which gives identical attention scores.
"""
import json
import os
import re

from toolkit import errors

from ...common.loaders.gguf import GGUFFile
from ...common.loaders.safetensors_io import open_safetensors_dir
from ...core.engine.backend import Tensor
from .config import LlamaConfig


# GGUF tensor name -> parameter name ({i} = layer index)
GGUF_NAMES = {
    "token_embd.weight": "embed_tokens.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "layers.{i}.input_layernorm.weight",
    "blk.{i}.attn_q.weight": "layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.ffn_norm.weight": "layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.ffn_gate.weight": "layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "layers.{i}.mlp.down_proj.weight",
}
# GGUF tensors that carry no weights we use (precomputed RoPE tables of old converters)
GGUF_IGNORED = re.compile(r"^(rope_freqs\.weight|blk\.\d+\.attn_rot_embd)$")

# HF parameter name -> our parameter name: HF nests the decoder under "model."
HF_PREFIX = "model."
HF_DTYPES = {"F32": "F32", "F16": "F16", "BF16": "BF16"}
GGUF_DTYPES = {"F32": "F32", "F16": "F16", "BF16": "BF16", "Q8_0": "Q8_0", "Q4_0": "Q4_0", "Q4_1": "Q4_1"}


def _compile(table):
    out = []
    for src, dst in table.items():
        pat = re.compile("^" + re.escape(src).replace(r"\{i\}", r"(\d+)") + "$")
        out.append((pat, dst))
    return out


_GGUF_PATTERNS = _compile(GGUF_NAMES)


def gguf_to_param(name):
    for pat, dst in _GGUF_PATTERNS:
        m = pat.match(name)
        if m:
            return dst.replace("{i}", m.group(1)) if m.groups() else dst
    return None


def param_to_gguf(param):
    for src, dst in GGUF_NAMES.items():
        pat = re.compile("^" + re.escape(dst).replace(r"\{i\}", r"(\d+)") + "$")
        m = pat.match(param)
        if m:
            return src.replace("{i}", m.group(1)) if m.groups() else src
    return None


class WeightSource:
    """Keeps the mapped weight file(s) open while tensors borrow their memory."""

    def __init__(self, path, handle, kind):
        self.path, self.handle, self.kind = path, handle, kind

    def close(self):
        """Unmaps the file(s). Tensors still referenced elsewhere keep the mapping alive (the
        loader warns with a ResourceWarning) rather than being left dangling."""
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def _vectors_to_f32(state):
    """RMSNorm weights (1-D) are computed with in F32; half-precision files store them as F16/BF16.
    Converting these few KB is the one copy loading makes; matrices stay in their stored dtype."""
    for name, t in state.items():
        if t.ndim == 1 and t.dtype != "F32":
            state[name] = t.to("F32")
    return state


def _param_shape(config, param):
    """The shape LlamaModel gives parameter `param`, or None if it has no such parameter."""
    c = config
    h = c.hidden_size
    top = {"embed_tokens.weight": (c.vocab_size, h), "norm.weight": (h,)}
    if not c.tie_word_embeddings:
        top["lm_head.weight"] = (c.vocab_size, h)
    if param in top:
        return top[param]
    m = re.fullmatch(r"layers\.(\d+)\.(.+)", param)
    if m is None or int(m.group(1)) >= c.num_hidden_layers or (m.group(1) != "0" and m.group(1)[0] == "0"):
        return None
    return {
        "input_layernorm.weight": (h,),
        "post_attention_layernorm.weight": (h,),
        "self_attn.q_proj.weight": (c.q_dim, h),
        "self_attn.k_proj.weight": (c.kv_dim, h),
        "self_attn.v_proj.weight": (c.kv_dim, h),
        "self_attn.o_proj.weight": (h, c.q_dim),
        "mlp.gate_proj.weight": (c.intermediate_size, h),
        "mlp.up_proj.weight": (c.intermediate_size, h),
        "mlp.down_proj.weight": (h, c.intermediate_size),
    }.get(m.group(2))


PARAMS_PER_LAYER = 9


def check_shapes(config, shapes, where):
    """Checks the file's tensors (param name -> shape) against the architecture its config declares,
    before the model allocates anything: a config that claims a huge vocab_size or layer count
    is a FormatError here, not a 100 TB allocation later."""
    for param, shape in shapes.items():
        want = _param_shape(config, param)
        if want is None:
            raise errors.FormatError(f"{where}: tensor {param!r} has no place in a Llama model with "
                                     f"{config.num_hidden_layers} layers")
        if tuple(shape) != want:
            raise errors.FormatError(f"{where}: tensor {param!r} has shape {tuple(shape)} but the config "
                                     f"(hidden_size, vocab_size, heads, ...) needs {want}")
    # Every name is valid and unique, so equal counts means none is missing.
    n_want = (2 if config.tie_word_embeddings else 3) + PARAMS_PER_LAYER * config.num_hidden_layers
    if len(shapes) != n_want:
        have = set(shapes)
        missing = [p for p in ("embed_tokens.weight", "norm.weight", "lm_head.weight") if p not in have
                   and _param_shape(config, p) is not None]
        for i in range(config.num_hidden_layers):
            if len(missing) >= 5:
                break
            missing += [f"layers.{i}.{s}" for s in ("input_layernorm.weight", "self_attn.q_proj.weight",
                        "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
                        "post_attention_layernorm.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
                        "mlp.down_proj.weight") if f"layers.{i}.{s}" not in have]
        raise errors.FormatError(f"{where}: {len(shapes)} weight tensors, but the config's architecture "
                                 f"({config.num_hidden_layers} layers) needs {n_want}; missing e.g. {missing[:5]}")


# The engine reads elements (and block scales) with their natural alignment; a file may place a
# tensor anywhere its alignment allows (GGUF general.alignment = 1, odd safetensors offsets).
_ELEMENT_ALIGN = {"F32": 4, "F16": 2, "BF16": 2, "Q8_0": 2, "Q4_0": 2, "Q4_1": 2}


def _wrap(view, file_offset, shape, dtype):
    """A Tensor over the mapped bytes, or, if they sit misaligned, over an aligned copy (the one
    case where loading copies a matrix: unaligned loads are undefined behaviour in C)."""
    if file_offset % _ELEMENT_ALIGN[dtype] == 0:  # mappings start page-aligned
        return Tensor.wrap(view, shape, dtype)
    t = Tensor(shape, dtype)
    dst = t.memoryview().cast("B")
    dst[:] = view.cast("B") if view.format != "B" else view
    dst.release()
    view.release()
    return t


def load_gguf(path):
    """(config, {param name: Tensor}, metadata, WeightSource) from a GGUF file."""
    g = GGUFFile(path)
    try:
        md = g.metadata
        config = LlamaConfig.from_gguf(md, has_output_weight="output.weight" in g.tensors)
        state = {}
        for name, info in g.tensors.items():
            if GGUF_IGNORED.match(name):
                continue
            param = gguf_to_param(name)
            if param is None:
                raise errors.UnsupportedError(f"{path}: tensor {name!r} has no place in a Llama model")
            if param in state:
                raise errors.FormatError(f"{path}: two tensors map to {param!r}")
            state[param] = (name, tuple(reversed(info.shape)))  # GGUF lists ne[0] (innermost) first
        check_shapes(config, {p: shape for p, (_, shape) in state.items()}, path)
        for param, (name, shape) in state.items():
            info = g.check_supported(name)
            state[param] = _wrap(g.tensor_bytes(name, writable=True), info.offset, shape, GGUF_DTYPES[info.type_name])
        return config, _vectors_to_f32(state), md, WeightSource(path, g, "gguf")
    except BaseException:
        state = None
        WeightSource(path, g, "gguf").close()
        raise


def load_hf_dir(directory):
    """(config, {param name: Tensor}, config.json dict, WeightSource) from an HF model directory."""
    cfg_path = os.path.join(directory, "config.json")
    try:
        with open(cfg_path, encoding="utf-8") as f:
            hf_cfg = json.load(f)
    except FileNotFoundError as exc:
        raise errors.ModelNotFoundError(f"{directory} has no config.json") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise errors.FormatError(f"{cfg_path} is not valid JSON: {exc}") from exc
    if not isinstance(hf_cfg, dict):
        raise errors.FormatError(f"{cfg_path} must hold a JSON object")
    config = LlamaConfig.from_hf(hf_cfg)
    files = open_safetensors_dir(directory)
    try:
        state = {}
        for name in files:
            _, info = files[name]
            if name.endswith("rotary_emb.inv_freq"):
                continue
            param = name[len(HF_PREFIX):] if name.startswith(HF_PREFIX) else name
            if param in state:
                raise errors.FormatError(f"{directory}: two tensors map to {param!r}")
            state[param] = (name, info)
        if config.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        check_shapes(config, {p: info.shape for p, (_, info) in state.items()}, directory)
        for param, (name, info) in state.items():
            dtype = HF_DTYPES.get(info.dtype)
            if dtype is None:
                raise errors.UnsupportedError(f"{directory}: tensor {name!r} has dtype {info.dtype}; "
                                              f"supported: {', '.join(HF_DTYPES)}")
            state[param] = _wrap(files.tensor_bytes(name, writable=True), info.begin, tuple(info.shape), dtype)
        return config, _vectors_to_f32(state), hf_cfg, WeightSource(directory, files, "safetensors")
    except BaseException:
        state = None
        WeightSource(directory, files, "safetensors").close()
        raise
