"""Tokenizer backed by the ``sentencepiece`` library (a ``tokenizer.model`` file, e.g. Llama 2).

Encoding and decoding are exactly sentencepiece's, including where that differs from HF:

* Control tokens written in the text are NOT recognised: ``"<s>"`` encodes as the pieces
  ``▁<``, ``s``, ``>``. Only user-defined pieces of the model are matched in text. Use
  ``add_special_tokens=True`` (or put the ids in yourself) to get BOS/EOS.
* ``decode`` never renders control tokens (they decode to ''), whatever ``skip_special_tokens``
  says; ``skip_special_tokens=True`` additionally drops the unknown token (otherwise " ⁇ ").
"""

from __future__ import annotations

import os
from typing import Any

import sentencepiece

from toolkit.common.tokenizers.base import Tokenizer
from toolkit.common.tokenizers.gguf_vocab import TokenType, bos_eos_processor, build_spm_backend
from toolkit.common.tokenizers.hf import HFTokenizer
from toolkit.errors import FormatError, ModelNotFoundError, UnsupportedError

# Text whose ids differ between BPE and unigram models, and under NFKC: ligature, full-width and
# circled forms, runs of spaces, digits, byte-fallback emoji, CJK.
_PROBE = "The ﬁnal Ｆull-width ①  spaces\tand 12345 🦙 你好世界, naïve café!"


class SentencePieceTokenizer(Tokenizer):
    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        add_bos: bool = True,
        add_eos: bool = False,
        eos_ids=(),
        chat_template: str | None = None,
    ):
        """``add_bos``/``add_eos`` apply when ``encode(..., add_special_tokens=True)``; Llama 2
        (and transformers' LlamaTokenizer) adds BOS only, hence the defaults."""
        self.path = os.fspath(model_path)
        if not os.path.isfile(self.path):
            raise ModelNotFoundError(f"{self.path}: no such sentencepiece model file")
        try:
            self._sp = sentencepiece.SentencePieceProcessor(model_file=self.path)
        except RuntimeError as e:
            raise FormatError(f"{self.path}: not a sentencepiece model ({e})") from None
        self.add_bos = add_bos
        self.add_eos = add_eos
        n = self._sp.get_piece_size()
        self._special = frozenset(
            i for i in range(n) if self._sp.is_control(i) or self._sp.is_unknown(i)
        )

        def opt(i: int) -> int | None:
            return i if i >= 0 else None  # sentencepiece says -1 for "none"

        super().__init__(bos_id=opt(self._sp.bos_id()), eos_id=opt(self._sp.eos_id()),
                         unk_id=opt(self._sp.unk_id()), pad_id=opt(self._sp.pad_id()),
                         eos_ids=eos_ids, chat_template=chat_template)

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def special_ids(self) -> frozenset[int]:
        return self._special

    def _encode(self, text: str, add_special_tokens: bool) -> list[int]:
        return self._sp.encode(text, add_bos=add_special_tokens and self.add_bos,
                               add_eos=add_special_tokens and self.add_eos)

    def _decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._special]
        return self._sp.decode(ids)

    def _id_to_token(self, i: int) -> str:
        return self._sp.id_to_piece(i)

    def _token_to_id(self, token: str) -> int | None:
        # piece_to_id answers unk_id for an unknown piece; only an exact round trip is a match.
        i = self._sp.piece_to_id(token)
        return i if self._sp.id_to_piece(i) == token else None

    def token_types(self) -> list[int]:
        """Per-id ``TokenType``, as GGUF's ``tokenizer.ggml.token_type`` would store it."""
        sp = self._sp

        def kind(i: int) -> TokenType:
            if sp.is_control(i):
                return TokenType.CONTROL
            if sp.is_unknown(i):
                return TokenType.UNKNOWN
            if sp.is_byte(i):
                return TokenType.BYTE
            if sp.is_unused(i):
                return TokenType.UNUSED
            return TokenType.NORMAL

        return [kind(i) for i in range(self.vocab_size)]

    def to_hf(self) -> HFTokenizer:
        """The same vocabulary as an HF ``tokenizers`` tokenizer (which, unlike sentencepiece,
        recognises control tokens written in the text)."""
        n = self.vocab_size
        pieces = [self._sp.id_to_piece(i) for i in range(n)]
        scores = [self._sp.get_score(i) for i in range(n)]
        backend = build_spm_backend(pieces, scores, self.token_types(), unk_id=self.unk_id)
        post = bos_eos_processor(pieces, self.bos_id if self.add_bos else None,
                                 self.eos_id if self.add_eos else None)
        if post is not None:
            backend.post_processor = post
        hf = HFTokenizer(backend, bos_id=self.bos_id, eos_id=self.eos_id, unk_id=self.unk_id,
                         pad_id=self.pad_id, eos_ids=self.eos_ids, chat_template=self.chat_template)
        # The rebuild assumes a BPE model with identity normalization (Llama's). A unigram model
        # or an NFKC normalizer would give other ids; refuse rather than export a wrong tokenizer.
        if hf.encode(_PROBE) != self.encode(_PROBE):
            raise UnsupportedError(
                f"{self.path}: this sentencepiece model (unigram, or with a normalization rule) "
                "cannot be rebuilt as an HF BPE tokenizer"
            )
        return hf

    @property
    def tokenizer_config(self) -> dict[str, Any]:
        def token(i: int | None) -> str | None:
            return None if i is None else self._sp.id_to_piece(i)

        config: dict[str, Any] = {
            "tokenizer_class": "LlamaTokenizerFast",
            "bos_token": token(self.bos_id),
            "eos_token": token(self.eos_id),
            "unk_token": token(self.unk_id),
            "pad_token": token(self.pad_id),
            "add_bos_token": self.add_bos,
            "add_eos_token": self.add_eos,
            "clean_up_tokenization_spaces": False,
            "legacy": True,
        }
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        return config

    def to_tokenizer_json(self, path: str | os.PathLike) -> None:
        self.to_hf().to_tokenizer_json(path)
