"""Pick and load the right tokenizer for a path: a model directory, a tokenizer file or a GGUF.

In a directory ``tokenizer.json`` wins over ``tokenizer.model`` (transformers prefers it too, and
it carries the added tokens). The companion files beside either (see ``hf_config``) supply
special-token roles, extra end-of-turn ids and the chat template.
"""

from __future__ import annotations

import os

from toolkit.common.loaders.gguf import GGUFFile
from toolkit.common.tokenizers.base import Tokenizer
from toolkit.common.tokenizers.gguf_vocab import from_gguf
from toolkit.common.tokenizers.hf import HFTokenizer
from toolkit.common.tokenizers.hf_config import find_companions, read_companions
from toolkit.common.tokenizers.spm import SentencePieceTokenizer
from toolkit.errors import FormatError, ModelNotFoundError, UnsupportedError


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """The tokenizer at ``path``: a directory, or a ``.json``, ``.model`` or ``.gguf`` file."""
    path = os.fspath(path)
    if os.path.isdir(path):
        for name in ("tokenizer.json", "tokenizer.model"):
            if os.path.isfile(os.path.join(path, name)):
                return load_tokenizer(os.path.join(path, name))
        raise ModelNotFoundError(f"{path}: neither tokenizer.json nor tokenizer.model")
    if not os.path.isfile(path):
        raise ModelNotFoundError(f"{path}: no such file or directory")
    if path.endswith(".gguf"):
        with GGUFFile(path) as g:
            try:
                return from_gguf(g.metadata)
            except FormatError as e:
                raise FormatError(f"{path}: {e}") from None
    companions = find_companions(os.path.dirname(path) or ".")
    if path.endswith(".json"):
        return HFTokenizer.from_files(path, **companions)
    if path.endswith(".model"):
        c = read_companions(**companions)
        return SentencePieceTokenizer(
            path,
            add_bos=bool(c.config.get("add_bos_token", True)),
            add_eos=bool(c.config.get("add_eos_token", False)),
            eos_ids=c.eos_ids,
            chat_template=c.chat_template,
        )
    raise UnsupportedError(
        f"{path}: cannot tell the tokenizer kind (expected .json, .model or .gguf)"
    )
