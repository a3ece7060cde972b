"""The Llama-family model plugin."""
from .config import LlamaConfig
from .model import KVCache, LlamaModel
from .plugin import Llama_Plugin, create_llama_plugin

__all__ = ["LlamaConfig", "LlamaModel", "KVCache", "Llama_Plugin", "create_llama_plugin"]
