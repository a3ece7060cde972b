"""Weight-file readers and writers (GGUF, safetensors): parse, validate, map; never compute."""

from toolkit.common.loaders.gguf import SUPPORTED, GGUFFile, GGUFTensorInfo
from toolkit.common.loaders.safetensors_io import (
    SafetensorsFile,
    SafetensorsTensorInfo,
    open_safetensors_dir,
    save_safetensors,
)

__all__ = [
    "SUPPORTED",
    "GGUFFile",
    "GGUFTensorInfo",
    "SafetensorsFile",
    "SafetensorsTensorInfo",
    "open_safetensors_dir",
    "save_safetensors",
]
