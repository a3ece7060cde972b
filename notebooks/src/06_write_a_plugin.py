# %% [markdown]
# # 06 · Write a model plugin
#
# A model plugin teaches the toolkit a new architecture. This notebook walks through the plugin
# guide's steps (see `docs/plugins.md`) for a small model built right here: a 2-layer byte-level
# transformer with random weights, saved as safetensors and loaded back through the plugin interface.
# Nothing here is special to notebooks: the cells write ordinary files into a package
# `tinylm/`, exactly the layout `toolkit/models/llama/` uses:
#
#     tinylm/
#       __init__.py   exports the plugin
#       config.py     a dataclass of hyper-parameters
#       model.py      the network, written with toolkit.core.engine.backend (no PyTorch, no NumPy)
#       plugin.py     the TextModelPluginInterface implementation
#
# The rules: all math goes through the backend (`Tensor`, `Module`, `Linear`, `RMSNorm`, `F.*`);
# bad input raises a typed `toolkit.errors` exception, never a placeholder result.

# %% tags=["parameters"]
seed = 0
threads = 2
d_model = 64
n_layers = 2
n_heads = 4
d_mlp = 128
out_dir = "results/06_write_a_plugin"

# %%
import os
import sys

plugin_root = os.path.abspath(os.path.join(out_dir, "plugins"))   # goes on sys.path
pkg = os.path.join(plugin_root, "tinylm")
os.makedirs(pkg, exist_ok=True)
print(pkg)

# %% [markdown]
# ## Step 1 · The config
# One dataclass holds every hyper-parameter and where the weights live. `from_json` reads the
# `config.json` we save beside the weights, so a weight directory describes itself.

# %%
%%writefile {pkg}/config.py
import json
import os
from dataclasses import asdict, dataclass, field
from typing import List

from toolkit import errors


@dataclass
class TinyConfig:
    vocab_size: int = 257            # 256 bytes + end-of-text
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 128
    max_position_embeddings: int = 512
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    eos_token_id: List[int] = field(default_factory=lambda: [256])
    model: str = ""                  # the weight directory

    @property
    def head_dim(self):
        return self.hidden_size // self.num_attention_heads

    @property
    def num_key_value_heads(self):   # no grouped-query attention: one K/V head per query head
        return self.num_attention_heads

    def validate(self):
        if self.hidden_size % self.num_attention_heads:
            raise errors.FormatError("hidden_size must be a multiple of num_attention_heads")
        if self.head_dim % 2:
            raise errors.FormatError("RoPE needs an even head_dim")

    def save(self, directory):
        d = asdict(self)
        d.pop("model")
        with open(os.path.join(directory, "config.json"), "w") as f:
            json.dump(d, f, indent=1)

    @classmethod
    def from_json(cls, directory):
        try:
            with open(os.path.join(directory, "config.json")) as f:
                d = json.load(f)
        except FileNotFoundError:
            raise errors.ModelNotFoundError(f"{directory} has no config.json") from None
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise errors.FormatError(f"config.json has unknown keys {sorted(unknown)}")
        cfg = cls(**d, model=str(directory))
        cfg.validate()
        return cfg

# %% [markdown]
# ## Step 2 · A tokenizer
# Bytes are tokens 0-255 and 256 ends the text. A real plugin would wrap `tokenizers` or
# `sentencepiece` (see `toolkit/common/tokenizers/`); the interface is the same: `encode`,
# `decode`, `vocab_size`, `eos_ids`, `id_to_token`, and a typed error for ids out of range.

# %%
%%writefile {pkg}/tokenizer.py
from toolkit import errors


class ByteTokenizer:
    vocab_size = 257
    eos_id = 256
    eos_ids = frozenset([256])
    chat_template = None

    def encode(self, text, add_special_tokens=False):
        if not isinstance(text, str):
            raise errors.TokenizerError(f"encode() needs a str, got {type(text).__name__}")
        return list(text.encode("utf-8"))

    def decode(self, ids, skip_special_tokens=False):
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.vocab_size:
                raise errors.TokenizerError(f"token id {i!r} is outside 0..{self.vocab_size - 1}")
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def id_to_token(self, i):
        self.decode([i])
        return "<eos>" if i == 256 else repr(bytes([i]))

    def stream(self, skip_special_tokens=False):
        return _ByteStream()


class _ByteStream:
    """Emits text once a UTF-8 character is complete (generation streams through this)."""

    def __init__(self):
        import codecs

        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def step(self, token_id):
        return "" if token_id >= 256 else self._dec.decode(bytes([token_id]))

    def flush(self):
        return self._dec.decode(b"", final=True)

# %% [markdown]
# ## Step 3 · The model
# The network reads like nanoGPT: small modules bottom-up, with shape comments. Two things make it
# a *toolkit* model rather than a toy:
#
# * `forward_batch(seqs, logits=...)` runs several sequences at once, each with its own KV cache
#   (the matmuls see all rows stacked; attention runs per sequence). With that and `new_cache`,
#   the toolkit's generation loop, sampler and `BatchManager` work unchanged.
# * Everything is a backend op: `Linear`, `RMSNorm`, `F.rope_`, `F.scaled_dot_product_attention`,
#   `F.silu_mul`, `F.add`. The engine runs each on all cores.

# %%
%%writefile {pkg}/model.py
from toolkit import errors
from toolkit.core.engine import functional as F
from toolkit.core.engine.backend import Embedding, Linear, Module, ModuleList, RMSNorm, Tensor


class TinyCache:
    """Keys and values of one sequence: k[i], v[i] are [capacity, heads, head_dim] per layer."""

    def __init__(self, cfg, capacity):
        shape = (capacity, cfg.num_attention_heads, cfg.head_dim)
        self.k = [Tensor(shape) for _ in range(cfg.num_hidden_layers)]
        self.v = [Tensor(shape) for _ in range(cfg.num_hidden_layers)]
        self.capacity, self.length = capacity, 0

    @property
    def free(self):
        return self.capacity - self.length


class Attention(Module):
    def __init__(self, cfg):
        super().__init__()
        d = cfg.hidden_size
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (Linear(d, d) for _ in range(4))


class MLP(Module):
    def __init__(self, cfg):
        super().__init__()
        self.gate_proj = Linear(cfg.hidden_size, cfg.intermediate_size)
        self.up_proj = Linear(cfg.hidden_size, cfg.intermediate_size)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x):                                              # [N, d_model]
        return self.down_proj(F.silu_mul(self.gate_proj(x), self.up_proj(x)))


class Block(Module):
    def __init__(self, cfg, index):
        super().__init__()
        self.cfg, self.index = cfg, index
        self.ln1 = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = Attention(cfg)
        self.ln2 = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, pos, spans):
        """x [N, d_model] (rows of all sequences stacked), pos [N] positions, spans: per sequence
        (first row, rows, cache). Updates x in place: x += attn(ln1(x)); x += mlp(ln2(x))."""
        c, n = self.cfg, x.shape[0]
        H, D = c.num_attention_heads, c.head_dim
        h = self.ln1(x)
        q = self.attn.q_proj(h).reshape(n, H, D)                       # [N, H, D]
        k = self.attn.k_proj(h).reshape(n, H, D)
        v = self.attn.v_proj(h).reshape(n, H, D)
        F.rope_(q, pos, D, c.rope_theta, mode="half")
        F.rope_(k, pos, D, c.rope_theta, mode="half")
        z = Tensor((n, H, D))
        for a, t, cache in spans:
            kc, vc, start = cache.k[self.index], cache.v[self.index], cache.length
            F.copy_rows_(kc, start, k[a:a + t])                        # append to the cache
            F.copy_rows_(vc, start, v[a:a + t])
            F.scaled_dot_product_attention(q[a:a + t], kc, vc, pos[a:a + t], start + t, out=z[a:a + t])
        F.add(x, self.attn.o_proj(z.reshape(n, H * D)), out=x)
        F.add(x, self.mlp(self.ln2(x)), out=x)
        return x


class TinyModel(Module):
    def __init__(self, cfg):
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.embed = Embedding(cfg.vocab_size, cfg.hidden_size)
        self.blocks = ModuleList([Block(cfg, i) for i in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size)
        object.__setattr__(self, "tokenizer", None)                    # set by the plugin

    def new_cache(self, capacity=None):
        cap = capacity or self.config.max_position_embeddings
        if cap > self.config.max_position_embeddings:
            raise errors.ContextLengthError(f"{cap} tokens exceed the context of {self.config.max_position_embeddings}")
        return TinyCache(self.config, cap)

    def forward(self, ids, cache=None, logits="all"):
        ids = [int(i) for i in ids]
        return self.forward_batch([(ids, cache or self.new_cache(len(ids)))], logits=logits)

    def forward_batch(self, seqs, logits="last", seq_hooks=None):
        """seqs: [(new token ids, TinyCache)]; logits for the last token of each ("last", [B, vocab])
        or for every new token ("all", [sum T, vocab]). This model declares no hook points, so
        per-sequence hooks (seq_hooks, which generation passes through) are refused."""
        if seq_hooks is not None and any(seq_hooks):
            raise errors.UnsupportedError("TinyModel has no hook points")
        ids, pos, spans = [], [], []
        for new, cache in seqs:
            if not new or len(new) > cache.free:
                raise errors.ContextLengthError(f"{len(new)} new tokens for a cache with {cache.free} free slots")
            spans.append((len(ids), len(new), cache))
            pos.extend(range(cache.length, cache.length + len(new)))
            ids.extend(new)
        bad = [i for i in ids if not 0 <= i < self.config.vocab_size]
        if bad:
            raise errors.IndexOutOfRangeError(f"token id {bad[0]} is outside 0..{self.config.vocab_size - 1}")
        pos_t = Tensor((len(ids),), "I32").load(pos)
        x = self.embed(Tensor((len(ids),), "I32").load(ids))          # [N, d_model]
        for block in self.blocks:
            block(x, pos_t, spans)
        for _, t, cache in spans:
            cache.length += t
        if logits == "last":
            rows = [a + t - 1 for a, t, _ in spans]
            x = Tensor.from_list([x[r:r + 1].to_list() for r in rows])  # [B, d_model]
        elif logits != "all":
            raise errors.InvalidArgumentError(f"logits must be 'all' or 'last', got {logits!r}")
        return self.lm_head(self.norm(x))                              # [rows, vocab]

# %% [markdown]
# ## Step 4 · The plugin
# The plugin implements `TextModelPluginInterface`: `initialize`, `load_model` (safetensors),
# `tokenize` / `detokenize`, `generate_text`, `infer_batch` through the `BatchManager`, and
# `cleanup`. Weights are memory-mapped and wrapped as tensors without a copy.

# %%
%%writefile {pkg}/plugin.py
from toolkit import errors
from toolkit.common.generation import SamplingParams, stream_text
from toolkit.common.interfaces.improved_base_plugin_interface import (PluginMetadata, PluginType,
                                                                      TextModelPluginInterface)
from toolkit.common.loaders.safetensors_io import open_safetensors_dir
from toolkit.common.managers.batch_manager import BatchManager
from toolkit.core.engine.backend import Tensor

from .config import TinyConfig
from .model import TinyModel
from .tokenizer import ByteTokenizer


class TinyLM_Plugin(TextModelPluginInterface):
    def __init__(self):
        super().__init__(PluginMetadata(
            name="TinyLM", version="0.1.0", author="notebook 06", description="a byte-level toy transformer",
            plugin_type=PluginType.MODEL_COMPONENT, model_architecture="Transformer", model_size="0.1M",
            supported_modalities=["text"]))
        self._config, self._model, self._files = TinyConfig(), None, None
        self.tokenizer, self.batch_manager, self.model_path = ByteTokenizer(), None, None

    def initialize(self, **kwargs) -> bool:
        unknown = set(kwargs) - set(TinyConfig.__dataclass_fields__)
        if unknown:
            raise errors.ArgumentTypeError(f"unknown settings {sorted(unknown)}")
        if "model" in kwargs:
            self._config = TinyConfig.from_json(kwargs["model"])
        for k, v in kwargs.items():
            setattr(self._config, k, v)
        self.load_model()
        self.batch_manager = BatchManager(self._model)
        self.is_initialized = True
        return True

    def load_model(self, config=None):
        if config is not None:
            self._config = config
        self.cleanup()
        files = open_safetensors_dir(self._config.model)
        model = TinyModel(self._config)
        state = {name: Tensor.wrap(files.tensor_bytes(name), tuple(files[name][1].shape), files[name][1].dtype)
                 for name in files}
        model.load_state_dict(state, strict=True)                     # names and shapes must match
        object.__setattr__(model, "tokenizer", self.tokenizer)
        self._model, self._files, self.model_path = model, files, self._config.model
        return model

    @property
    def model(self):
        if self._model is None:
            raise errors.ToolkitError("no model loaded: call initialize(model=DIR) first")
        return self._model

    @property
    def config(self):
        return self._config

    def tokenize(self, text, **kwargs):
        return [float(i) for i in self.tokenizer.encode(text)]

    def detokenize(self, token_ids, **kwargs):
        return self.tokenizer.decode([int(t) for t in token_ids])

    def generate_text(self, prompt, max_new_tokens=32, **kwargs):
        params = SamplingParams.from_kwargs(kwargs, max_new_tokens=max_new_tokens)
        return "".join(stream_text(self.model, self.tokenizer, self.tokenizer.encode(prompt), params))

    def infer(self, data):
        return self.generate_text(data)

    def infer_batch(self, requests, max_new_tokens=32, **kwargs):
        """All prompts advance together: one forward pass per step for the whole batch."""
        ids = []
        for i, prompt in enumerate(requests):
            rid = ("req", i)
            self.batch_manager.add_request(rid, self.tokenize(prompt), max_new_tokens=max_new_tokens, **kwargs)
            ids.append(rid)
        done = {}
        while len(done) < len(ids):
            out = self.batch_manager.step()
            if out is None:
                raise errors.ToolkitError("the batch manager stopped before every request finished")
            done[self.batch_manager.last_request_id] = out
        return [self.detokenize(done[rid].to_list()) for rid in ids]

    def cleanup(self):
        self._model = self.batch_manager = None
        if self._files is not None:
            self._files.close()
            self._files = None
        self.is_initialized = False
        return True

# %% [markdown]
# ## Step 5 · `__init__.py`
# Export the plugin and a factory, as `toolkit/models/llama/__init__.py` does.

# %%
with open(os.path.join(pkg, "__init__.py"), "w") as f:
    f.write('"""TinyLM: a byte-level toy transformer plugin (written by notebook 06)."""\n'
            "from .config import TinyConfig\n"
            "from .model import TinyModel\n"
            "from .plugin import TinyLM_Plugin\n\n\n"
            "def create_tinylm_plugin():\n"
            "    return TinyLM_Plugin()\n")
sys.path.insert(0, plugin_root)
import importlib

import tinylm

importlib.reload(tinylm)
print(sorted(os.listdir(pkg)))

# %% [markdown]
# ## Random weights, saved as safetensors
# Build the model once to learn every parameter's name and shape, fill them with seeded random
# numbers (std 1/sqrt(fan_in); norms start at 1), and write `model.safetensors` + `config.json`.
# Plain `array('f')` buffers go straight to the writer: no NumPy involved.

# %%
import random
from array import array

from toolkit.common.loaders.safetensors_io import save_safetensors

cfg = tinylm.TinyConfig(hidden_size=d_model, num_hidden_layers=n_layers, num_attention_heads=n_heads,
                        intermediate_size=d_mlp)
weights_dir = os.path.abspath(os.path.join(out_dir, "tinylm-random"))
os.makedirs(weights_dir, exist_ok=True)
rng = random.Random(seed)
tensors = {}
for name, p in tinylm.TinyModel(cfg).named_parameters():
    n = p.numel
    if len(p.shape) == 1:
        vals = array("f", [1.0] * n)                                   # RMSNorm gains
    else:
        std = p.shape[-1] ** -0.5
        vals = array("f", (rng.gauss(0.0, std) for _ in range(n)))
    tensors[name] = ("F32", p.shape, vals)
save_safetensors(os.path.join(weights_dir, "model.safetensors"), tensors, metadata={"seed": str(seed)})
cfg.save(weights_dir)
print(len(tensors), "tensors,", sum(len(v[2]) for v in tensors.values()), "parameters ->", weights_dir)

# %% [markdown]
# ## Load it through the plugin interface

# %%
import toolkit
from toolkit.core.engine import backend

backend.set_threads(threads)
plugin = tinylm.create_tinylm_plugin()
plugin.initialize(model=weights_dir)
print(plugin)
print(plugin.model)
ids = plugin.tokenize("hello")
print("tokenize:", ids, "-> detokenize:", repr(plugin.detokenize([int(i) for i in ids])))

# %% [markdown]
# ## Test it like a plugin author should
# 1. **The KV cache is right**: logits for a sequence in one pass must equal prefill + one token at a
#    time through the cache.
# 2. **Batching is invisible**: `infer_batch` (one stacked pass per step) gives each prompt exactly
#    the text `generate_text` gives it alone (the engine's matmul rows do not depend on their neighbours).
# 3. **Bad input raises a typed error**, not a crash or a placeholder.

# %%
text = "The cat sat"
ids = plugin.tokenizer.encode(text)
full = plugin.model.forward(ids, logits="all").tolist()                # [T, vocab] in one pass
cache = plugin.model.new_cache(len(ids))
step = [plugin.model.forward_batch([([i], cache)], logits="last").tolist()[0] for i in ids]
err = max(abs(a - b) for r1, r2 in zip(full, step) for a, b in zip(r1, r2))
print(f"one pass vs token by token: max |diff| = {err:.2e}")
assert err < 1e-4

prompts = ["abc", "The quick brown fox", "zz"]
alone = [plugin.generate_text(p, max_new_tokens=12) for p in prompts]
together = plugin.infer_batch(prompts, max_new_tokens=12)
for p, a_, b_ in zip(prompts, alone, together):
    print(f"{p!r:24} alone {a_!r:30} batched {b_!r}")
assert alone == together

from toolkit import errors

for bad in (lambda: plugin.detokenize([999]), lambda: plugin.model.forward([300])):
    try:
        bad()
    except errors.ToolkitError as e:
        print(type(e).__name__, "-", e)
    else:
        raise AssertionError("bad input was accepted")

# %% [markdown]
# Random weights produce random bytes, of course. Sampling works too, seeded:

# %%
print(repr(plugin.generate_text("Once", max_new_tokens=24, temperature=1.0, seed=seed)))

# %% [markdown]
# ## Record the experiment
# The manifest names the plugin's factory (`tinylm.plugin:TinyLM_Plugin`) and where it lives, so
# `python -m toolkit repro check` can import it again, load the same safetensors file (its sha256
# is checked) and compare the probe's logits bit for bit.

# %%
import toolkit.experiments as ex

manifest = ex.record(out_dir, plugin, seed=seed, extra={"kv_cache_max_diff": err, "batched_equals_alone": True})
print(manifest["model"]["loader"])
print(ex.check(manifest["_path"], model=plugin).summary())
_ = plugin.cleanup()
