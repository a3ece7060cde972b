"""`toolkit.load(...)` and the handle it returns: the small public API most users need.

    m = toolkit.load("smollm2-135m-instruct")     # or a .gguf file, or an HF model directory
    m.generate("The capital of France is", max_new_tokens=20)

Everything here delegates to the model plugin; nothing here does math.
"""
import os

from toolkit import errors

from . import interp
from .models.llama.plugin import Llama_Plugin


class Model:
    """A loaded model: tokenizer, logits, generation. Close it (or use `with`) to unmap the weights."""

    def __init__(self, plugin: Llama_Plugin):
        self.plugin = plugin

    # ---- facts ----
    @property
    def config(self):
        return self.plugin.config

    @property
    def model(self):
        """The LlamaModel module (layers, weights, hooks)."""
        return self.plugin.model

    @property
    def tokenizer(self):
        self.plugin.model  # raises if closed
        return self.plugin.tokenizer

    @property
    def path(self):
        return self.plugin.model_path

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=False, **kwargs):
        """The conversation as the model's chat template renders it: text, or with tokenize=True
        its token ids (what generate() would encode it to). Other keywords reach the template."""
        if not isinstance(tokenize, bool):
            raise errors.ArgumentTypeError(f"tokenize must be a bool, got {tokenize!r:.40}")
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, **kwargs)
        return self._ids(text) if tokenize else text

    # ---- compute ----
    def _ids(self, prompt_or_ids):
        return self.plugin.prompt_ids(prompt_or_ids)

    def logits(self, ids):
        """Logits at every position: Tensor [n_tokens, vocab] for a text or a list of token ids."""
        ids = self._ids(ids)
        if not ids:
            raise errors.InvalidArgumentError("logits() needs at least one token")
        return self.model.forward(ids, logits="all")

    def generate(self, prompt_or_ids, max_new_tokens=None, fwd_hooks=None, **kwargs) -> str:
        """The newly generated text (the prompt is not repeated). max_new_tokens None: the load-time
        default (64 unless toolkit.load set one). fwd_hooks [(name or filter, fn)] apply to the
        prompt and to every generated token (the KV cache keeps what they edit)."""
        _not_here("generate", kwargs, ("details", "hooks"))
        return "".join(self.stream(prompt_or_ids, max_new_tokens=max_new_tokens, fwd_hooks=fwd_hooks, **kwargs))

    def generate_ids(self, prompt_or_ids, max_new_tokens=None, fwd_hooks=None, **kwargs) -> list:
        """The newly generated token ids. With stop strings, ids run up to the token that completed one."""
        _not_here("generate_ids", kwargs, ("details", "top", "probs", "hooks"))
        hooks = interp.registry.expand(self.model, fwd_hooks)
        if kwargs.get("stop", self.plugin.sampling_defaults.get("stop")):
            # stop strings are matched on text: decode
            events = self.plugin.stream_text(prompt_or_ids, details=True, probs=False, max_new_tokens=max_new_tokens,
                                             hooks=hooks, **kwargs)
            return [ev.token_id for ev in events if not ev.eos]
        return list(self.plugin.generate_token_ids(prompt_or_ids, max_new_tokens=max_new_tokens, hooks=hooks,
                                                   **kwargs))

    def stream(self, prompt_or_ids, max_new_tokens=None, fwd_hooks=None, details=False, top=5, **kwargs):
        """An iterator of text pieces as they are generated (never splits a UTF-8 character).
        fwd_hooks apply as in generate().

        details=True yields a TokenEvent per token instead: token_id, text, prob, logprob, top
        (the `top` likeliest (token_id, text, prob)), seconds, phase ("prefill" / "decode").
        """
        _not_here("stream", kwargs, ("hooks",))
        hooks = interp.registry.expand(self.model, fwd_hooks)
        return self.plugin.stream_text(prompt_or_ids, details=details, top=top, max_new_tokens=max_new_tokens,
                                       hooks=hooks, **kwargs)

    # ---- looking inside (toolkit.interp; docs/hooks.md) ----
    def hook_names(self):
        """Every hook point's name ("blocks.3.attn.hook_pattern", ...) in forward order."""
        return self.model.hook_names()

    def hooks(self, fwd_hooks=(), clear_contexts=False):
        """`with m.hooks(fwd_hooks=[(name or filter, fn)]):` hooks active inside the block only,
        removed however it exits. fn(tensor, hook) may edit the tensor or return a replacement."""
        return interp.hooks(self, fwd_hooks, clear_contexts=clear_contexts)

    def add_hook(self, name_or_filter, fn):
        """Registers fn on every hook point the filter selects, until removed; returns handles."""
        return interp.add_hook(self.model, name_or_filter, fn)

    def remove_hooks(self, name_or_filter=None):
        """Removes every registered hook, or those on the hook points a filter selects."""
        interp.remove_hooks(self.model, name_or_filter)

    reset_hooks = remove_hooks

    def run_with_cache(self, prompt_or_ids, names_filter=None, fwd_hooks=()):
        """(logits [n_tokens, vocab], ActivationCache): copies of the activations names_filter
        selects (a name, glob, list or predicate; None: all)."""
        return interp.run_with_cache(self.model, self._ids(prompt_or_ids), names_filter, fwd_hooks)

    def run_with_hooks(self, prompt_or_ids, fwd_hooks=()):
        """Logits [n_tokens, vocab] like logits(), with fwd_hooks applied to this pass only."""
        return interp.run_with_hooks(self.model, self._ids(prompt_or_ids), fwd_hooks)

    # ---- profiling ----
    def profile(self, log_capacity=None):
        """`with m.profile() as prof:` counts every engine op run inside the block, per op, per
        module region (hook paths: blocks.3.attn, blocks.3.mlp, unembed, ...) and per generated
        token; afterwards prof.table(), by_op(), by_layer(), per_token(), to_dict() and
        export_chrome_trace(path) report it. Results are bit-identical with or without it."""
        from .core.engine.profile import DEFAULT_LOG_CAPACITY, Profiler

        self.plugin.model  # raises if closed
        return Profiler(DEFAULT_LOG_CAPACITY if log_capacity is None else log_capacity)

    # ---- lifetime ----
    def close(self):
        self.plugin.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        if not self.plugin.is_loaded:
            return "<toolkit.Model (closed)>"
        c = self.config
        return (f"<toolkit.Model {self.path}: {c.num_hidden_layers} layers, d_model {c.hidden_size}, "
                f"vocab {c.vocab_size}, {self.model.num_parameters() / 1e6:.1f}M params>")


def _not_here(call, kwargs, names):
    """Keywords that belong to another call (or to the plugin's internals) as a typed error naming
    the right one, not a TypeError from deep inside."""
    bad = [n for n in names if n in kwargs]
    if bad:
        hint = {"details": "stream(details=True)", "top": "stream(details=True, top=k)", "hooks": "fwd_hooks=",
                "probs": "stream(details=True)"}
        raise errors.ArgumentTypeError(f"{call}() takes no {', '.join(bad)}; use "
                                       f"{', '.join(hint[n] for n in bad)}")


def load(model="smollm2-135m-instruct", threads=None, **defaults) -> Model:
    """Loads a model by name ("smollm2-135m-instruct"), .gguf path or HF directory.

    threads sets the engine's worker count; kv_cache_dtype="F16" halves KV-cache memory and
    traffic (F32, the default, reproduces fp32 references exactly); other keywords are default
    generation settings (max_new_tokens, temperature, top_k, top_p, min_p, seed, ...).
    """
    if not isinstance(model, (str, os.PathLike)):
        raise errors.ArgumentTypeError(f"model is a name, a .gguf path or a model directory, got {model!r:.60}")
    plugin = Llama_Plugin()
    plugin.initialize(model=os.fspath(model), threads=threads, **defaults)
    return Model(plugin)
