"""Tokenizers: one interface (``Tokenizer``) over HF tokenizers, sentencepiece and GGUF vocabs."""

from toolkit.common.tokenizers.base import StreamDecoder, Tokenizer
from toolkit.common.tokenizers.gguf_vocab import from_gguf
from toolkit.common.tokenizers.hf import HFTokenizer
from toolkit.common.tokenizers.load import load_tokenizer
from toolkit.common.tokenizers.spm import SentencePieceTokenizer

__all__ = [
    "HFTokenizer",
    "SentencePieceTokenizer",
    "StreamDecoder",
    "Tokenizer",
    "from_gguf",
    "load_tokenizer",
]
