"""The plugin interfaces that model plugins implement (see the model plugin guide).

`TextModelPluginInterface` fixes the methods a text-model plugin must provide; the base class
supplies only what can be done generically (a plain loop for `infer_batch`). Implementations raise
typed errors from toolkit.errors instead of returning placeholder values.
"""
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional


class PluginType(Enum):
    MODEL_COMPONENT = "model_component"
    TOKENIZER = "tokenizer"
    LOADER = "loader"
    TOOL = "tool"


@dataclass
class PluginMetadata:
    name: str
    version: str
    author: str = ""
    description: str = ""
    plugin_type: PluginType = PluginType.MODEL_COMPONENT
    dependencies: List[str] = field(default_factory=list)
    compatibility: Dict[str, Any] = field(default_factory=dict)
    model_architecture: Optional[str] = None
    model_size: Optional[str] = None
    required_memory_gb: Optional[float] = None
    supported_modalities: List[str] = field(default_factory=list)


class BasePluginInterface(ABC):
    def __init__(self, metadata: PluginMetadata):
        if not isinstance(metadata, PluginMetadata):
            raise TypeError(f"metadata must be a PluginMetadata, got {type(metadata).__name__}")
        self.metadata = metadata
        self.is_initialized = False

    @abstractmethod
    def initialize(self, **kwargs) -> bool: ...

    @abstractmethod
    def cleanup(self) -> bool: ...

    def infer(self, data: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not implement infer()")

    def infer_batch(self, requests: List[Any]) -> List[Any]:
        """Generic fallback: one infer() per request."""
        return [self.infer(r) for r in requests]

    def __repr__(self):
        m = self.metadata
        return f"<{type(self).__name__} {m.name} {m.version} initialized={self.is_initialized}>"


class TextModelPluginInterface(BasePluginInterface):
    @abstractmethod
    def load_model(self, config=None): ...

    @abstractmethod
    def tokenize(self, text: str, **kwargs) -> List[float]: ...

    @abstractmethod
    def detokenize(self, token_ids: List[int], **kwargs) -> str: ...

    @abstractmethod
    def generate_text(self, prompt: str, max_new_tokens: int = 512, **kwargs) -> str: ...
