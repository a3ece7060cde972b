"""Llama_Plugin: the plugin-guide interface over LlamaModel, for GGUF files and HF directories."""
import dataclasses
import logging
import os
from typing import Any, List

from toolkit import errors

from ...common import validate
from ...common.interfaces.improved_base_plugin_interface import (PluginMetadata, PluginType,
                                                                 TextModelPluginInterface)
from ...core.engine import backend
from ...core.engine.backend import Tensor
from .config import LlamaConfig
from .model import LlamaModel

logger = logging.getLogger(__name__)

# initialize(**kwargs) keys that are default sampling settings rather than config fields
SAMPLING_KEYS = ("max_new_tokens", "temperature", "top_k", "top_p", "min_p", "repetition_penalty", "seed",
                 "stop", "stop_at_eos")


class Llama_Plugin(TextModelPluginInterface):
    """Plugin for Llama-family models (SmolLM2, Llama 2/3, TinyLlama, ...)."""

    def __init__(self):
        metadata = PluginMetadata(
            name="Llama",
            version="1.0.0",
            author="cengine-toolkit",
            description="Llama-family decoder models on the C engine (GGUF or HF safetensors weights)",
            plugin_type=PluginType.MODEL_COMPONENT,
            dependencies=[],
            compatibility={"python_version": ">=3.11", "min_memory_gb": 0.5},
            model_architecture="Transformer",
            model_size="135M",
            required_memory_gb=0.5,
            supported_modalities=["text"],
        )
        super().__init__(metadata)
        self._config = LlamaConfig()
        self._model = None
        self._weights = None
        self.tokenizer = None
        self.batch_manager = None
        self.model_path = None
        self.sampling_defaults = {}

    # ---- lifecycle ----
    def initialize(self, **kwargs) -> bool:
        """Loads the model named by `model` (a name or a path); `threads` sets the engine's threads;
        sampling keys (max_new_tokens, temperature, top_p, seed, ...) become generation defaults.

        Returns True; failures raise (a typed ToolkitError naming the problem)."""
        unknown = set(kwargs) - LlamaConfig.field_names() - set(SAMPLING_KEYS)
        if unknown:
            raise errors.ArgumentTypeError(f"initialize() got unknown settings: {', '.join(sorted(unknown))}")
        arch = set(kwargs) - set(LlamaConfig.RUNTIME_FIELDS) - set(SAMPLING_KEYS)
        if arch:
            raise errors.InvalidArgumentError(
                f"{', '.join(sorted(arch))}: architecture fields are read from the weight file and cannot be "
                f"overridden at load (settable: {', '.join(LlamaConfig.RUNTIME_FIELDS)} and generation settings)")
        for k in SAMPLING_KEYS:
            if k in kwargs:
                self.sampling_defaults[k] = kwargs.pop(k)
        from ...common.generation import SamplingParams

        SamplingParams.from_kwargs(self.sampling_defaults)  # validate now, not at the first request
        for k, v in kwargs.items():
            setattr(self._config, k, v)
        if self._config.threads is not None:
            backend.set_threads(validate.number("threads", self._config.threads, 1, integer=True))
        logger.info("Initializing Llama plugin with %s", self._config.model)
        self.load_model()
        from ...common.managers.batch_manager import BatchManager

        self.batch_manager = BatchManager(self._model, defaults=self.sampling_defaults)
        self.is_initialized = True
        return True

    def load_model(self, config=None):
        """Loads weights and tokenizer from config.model (default model name, .gguf file or HF dir)."""
        from ...common.hub import resolve_model
        from .weights import load_gguf, load_hf_dir

        if config is not None:
            if not isinstance(config, LlamaConfig):
                raise errors.ArgumentTypeError(f"config must be a LlamaConfig, got {type(config).__name__}")
            self._config = config
        self.cleanup()
        path = str(resolve_model(self._config.model))
        if os.path.isdir(path):
            from ...common.tokenizers.load import load_tokenizer

            cfg, state, _, weights = load_hf_dir(path)
            tokenizer = load_tokenizer(path)
        else:
            from ...common.tokenizers.gguf_vocab import from_gguf

            cfg, state, md, weights = load_gguf(path)
            tokenizer = from_gguf(md)
        try:
            cfg.model, cfg.threads = self._config.model, self._config.threads
            cfg.kv_cache_dtype = self._config.kv_cache_dtype
            cfg.validate()
            model = LlamaModel(cfg)
            model.load_state_dict(state, strict=True)
            if tokenizer.vocab_size > cfg.vocab_size:
                raise errors.FormatError(
                    f"{path}: the tokenizer's ids reach {tokenizer.vocab_size - 1} but the model has only "
                    f"{cfg.vocab_size} embeddings")
        except BaseException:
            state = None
            weights.close()
            raise
        object.__setattr__(model, "tokenizer", tokenizer)
        self._config, self._model, self._weights, self.tokenizer, self.model_path = cfg, model, weights, tokenizer, path
        return self._model

    def cleanup(self) -> bool:
        """Drops the model and unmaps its weights (tensors still held elsewhere keep their memory)."""
        if self._model is not None:
            self._model.close()  # a generation still running elsewhere stops at its next pass
        self._model = None
        self.batch_manager = None
        if self._weights is not None:
            self._weights.close()
            self._weights = None
        self.is_initialized = False
        return True

    @property
    def model(self):
        if self._model is None:
            if self.model_path is not None:
                raise errors.ClosedError(f"the model ({self.model_path}) was closed; load it again to use it")
            raise errors.ToolkitError("the plugin has no model loaded: call initialize() or load_model() first")
        return self._model

    @property
    def config(self):
        return self._config

    # ---- text <-> ids ----
    def tokenize(self, text: str, **kwargs) -> List[float]:
        """Token ids of `text` (as floats, the guide's convention); no special tokens are added
        unless add_special_tokens=True. Raises TokenizerError on bad input."""
        self.model
        return [float(i) for i in self.tokenizer.encode(text, **kwargs)]

    def detokenize(self, token_ids: List[int], **kwargs) -> str:
        """Text of token ids (ints, or whole-number floats); raises TokenizerError on bad ids."""
        self.model
        return self.tokenizer.decode(validate.token_ids(token_ids, error=errors.TokenizerError), **kwargs)

    # ---- generation ----
    def _params(self, max_new_tokens=None, **kwargs):
        from ...common.generation import SamplingParams

        if max_new_tokens is not None:
            kwargs["max_new_tokens"] = max_new_tokens
        return SamplingParams.from_kwargs(self.sampling_defaults, **kwargs)

    def prompt_ids(self, prompt):
        """Token ids of a prompt: text is encoded (no special tokens added), ids are checked."""
        self.model
        if isinstance(prompt, str):
            if not prompt:
                raise errors.InvalidArgumentError("the prompt is empty")
            return self.tokenizer.encode(prompt)
        from .model import _as_id_list

        return _as_id_list(prompt, self._model.config.vocab_size)

    _prompt_ids = prompt_ids

    def stream_text(self, prompt, details=False, top=5, probs=True, hooks=None, **kwargs):
        """Text pieces as generated, or with details=True a TokenEvent per token (id, text, prob,
        logprob, `top` alternatives, step time, phase): see toolkit.common.generation. hooks (a
        list of (name, fn)) apply in prefill and in every decode step."""
        from ...common.generation import stream_text

        return stream_text(self.model, self.tokenizer, self.prompt_ids(prompt), self._params(**kwargs), details, top,
                           probs, hooks)

    def generate_token_ids(self, prompt, hooks=None, **kwargs):
        """New token ids (an iterator), decoding no text: stop strings do not apply here."""
        from ...common.generation import generate_ids

        params = self._params(**kwargs)
        return generate_ids(self.model, self.prompt_ids(prompt), params, hooks=hooks)

    @property
    def is_loaded(self):
        return self._model is not None

    def generate_text(self, prompt: str, max_new_tokens: int = None, **kwargs) -> str:
        """The newly generated text for `prompt` (a string or token ids)."""
        return "".join(self.stream_text(prompt, max_new_tokens=max_new_tokens, **kwargs))

    def infer(self, data: Any) -> Any:
        if isinstance(data, str):
            return self.generate_text(data)
        raise errors.ArgumentTypeError(f"infer() takes a prompt string, got {type(data).__name__}")

    def infer_batch(self, requests: List[Any], **kwargs) -> List[Any]:
        """Generates for every prompt together through the BatchManager; returns the new texts in
        request order, each exactly what generate_text would return for it alone. Safe to call from
        several threads at once: their requests share the batch, and each caller gets its own."""
        if self.batch_manager is None:
            self.model  # ClosedError after close(), else the error below
            raise errors.ToolkitError("infer_batch() needs initialize() first")
        if not isinstance(requests, (list, tuple)):
            raise errors.ArgumentTypeError("infer_batch() takes a list of prompt strings")
        params = dataclasses.asdict(self._params(**kwargs))
        prompts = []
        for prompt in requests:
            if not isinstance(prompt, str):
                raise errors.ArgumentTypeError(f"infer_batch() prompts must be strings, got {type(prompt).__name__}")
            prompts.append(self.prompt_ids(prompt))
        bm = self.batch_manager
        rids = []
        try:
            for ids in prompts:
                rid = object()  # unique even across concurrent callers
                bm.add_request(rid, ids, private=True, **params)
                rids.append(rid)
            return [r.text for r in bm.wait(rids)]
        except BaseException:
            for rid in rids:  # leave nothing of this call running or uncollected in the shared manager
                bm.discard(rid)
            raise


def create_llama_plugin() -> Llama_Plugin:
    return Llama_Plugin()
