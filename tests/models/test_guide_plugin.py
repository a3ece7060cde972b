"""The plugin guide's example plugin, placeholders filled in, runs against the framework unchanged in shape.

The class below follows the guide's Step 5 line for line: same base class, metadata, methods and
call pattern (Tensor([1, n]).load(ids), model.generate, BatchManager.add_request/step). Only the
placeholder behaviour (dummy ids, "Generated N tokens", "Error") is replaced by real errors.
"""
import logging
from typing import Any, List

import pytest

from toolkit import errors
from toolkit.common.interfaces.improved_base_plugin_interface import (PluginMetadata, PluginType,
                                                                      TextModelPluginInterface)
from toolkit.core.engine.backend import Tensor
from toolkit.models.llama.config import LlamaConfig as ModelNameConfig
from toolkit.models.llama.model import LlamaModel as ModelNameModel

logger = logging.getLogger(__name__)


class ModelName_Plugin(TextModelPluginInterface):
    def __init__(self, weights_path):
        metadata = PluginMetadata(
            name="ModelName", version="1.0.0", author="Your Name", description="Plugin for ModelName",
            plugin_type=PluginType.MODEL_COMPONENT, dependencies=[],
            compatibility={"python_version": ">=3.8", "min_memory_gb": 8.0},
            model_architecture="Transformer", model_size="135M", required_memory_gb=16.0,
            supported_modalities=["text"],
        )
        super().__init__(metadata)
        self._config = ModelNameConfig()
        self._model = None
        self.batch_manager = None
        self._weights_path = weights_path

    def initialize(self, **kwargs) -> bool:
        for k, v in kwargs.items():
            if hasattr(self._config, k):
                setattr(self._config, k, v)
        self.load_model()
        from toolkit.common.managers.batch_manager import BatchManager
        self.batch_manager = BatchManager(self._model)
        return True

    def load_model(self, config=None):
        if config:
            self._config = config
        from toolkit.common.tokenizers.gguf_vocab import from_gguf
        from toolkit.models.llama.weights import load_gguf

        cfg, state, md, self._weights = load_gguf(self._weights_path)
        self._model = ModelNameModel(cfg)
        self._model.load_state_dict(state)
        self._model.tokenizer = from_gguf(md)
        return self._model

    def infer(self, data: Any) -> Any:
        if isinstance(data, str):
            return self.generate_text(data)
        raise TypeError("infer() takes a string")

    def tokenize(self, text: str, **kwargs) -> List[float]:
        try:
            return [float(x) for x in self._model.tokenizer.encode(text)]
        except errors.TokenizerError:
            logger.error("tokenize failed for %r", text)
            raise

    def detokenize(self, token_ids: List[int], **kwargs) -> str:
        try:
            return self._model.tokenizer.decode([int(x) for x in token_ids])
        except errors.TokenizerError:
            logger.error("detokenize failed")
            raise

    def infer_batch(self, requests: List[Any]) -> List[Any]:
        results = {}
        req_ids = []
        for i, prompt in enumerate(requests):
            ids = self.tokenize(prompt)
            rid = 1000 + i
            self.batch_manager.add_request(rid, ids, max_new_tokens=6)
            req_ids.append(rid)
        for _ in req_ids:
            out_tensor = self.batch_manager.step()
            results[self.batch_manager.last_request_id] = self.detokenize([int(x) for x in out_tensor.to_list()])
        return [results[r] for r in req_ids]

    def generate_text(self, prompt: str, max_new_tokens: int = 512, **kwargs) -> str:
        ids = self.tokenize(prompt)
        t = Tensor([1, len(ids)])
        t.load(ids)
        out = self._model.generate(t, max_new_tokens=max_new_tokens)
        return self.detokenize([int(x) for x in out.to_list()])

    def cleanup(self) -> bool:
        self._model = None
        self._weights.close()
        return True


def test_guide_plugin_runs(smollm2_gguf_path, model):
    plugin = ModelName_Plugin(smollm2_gguf_path)
    assert plugin.initialize(threads=2) is True
    try:
        text = plugin.generate_text("The capital of France is", max_new_tokens=6)
        assert text == model.generate("The capital of France is", max_new_tokens=6)
        batch = plugin.infer_batch(["The capital of France is", "Water boils at"])
        assert batch[0] == text
        assert batch[1] == model.generate("Water boils at", max_new_tokens=6)
        with pytest.raises(errors.TokenizerError):
            plugin.detokenize([10 ** 7])
    finally:
        plugin.cleanup()
