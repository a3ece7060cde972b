"""Tokenizer backed by the Hugging Face ``tokenizers`` library (``tokenizer.json``).

Also the backend for tokenizers rebuilt from GGUF metadata (see ``gguf_vocab``). Special tokens in
the text are matched as single tokens, as in transformers. Special-token roles come from the caller
or from ``tokenizer_config.json``; this module never guesses them from token spellings.
"""

from __future__ import annotations

import os
from typing import Any

import tokenizers

from toolkit.common.atomic import atomic_write
from toolkit.common.tokenizers.base import Tokenizer
from toolkit.common.tokenizers.hf_config import read_companions
from toolkit.errors import FormatError, ModelNotFoundError, TokenizerError


class HFTokenizer(Tokenizer):
    """A ``tokenizers.Tokenizer`` plus the special-token roles the file itself cannot express."""

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        *,
        bos_id: int | None = None,
        eos_id: int | None = None,
        unk_id: int | None = None,
        pad_id: int | None = None,
        eos_ids=(),
        chat_template: str | None = None,
    ):
        # Padding or truncation stored in tokenizer.json would change the ids encode() returns.
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._tok = tokenizer
        added = tokenizer.get_added_tokens_decoder()
        self._special = frozenset(i for i, t in added.items() if t.special)
        # Added ids can leave holes or sit past the model's vocabulary; the range must cover them.
        # The count of entries is not enough either: a tokenizer.json may number its entries past
        # it (ids 0..9 and 1000000), and the model must cover the largest id.
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        self._vocab_size = max(tokenizer.get_vocab_size(with_added_tokens=True),
                               max(added, default=-1) + 1, max(vocab.values(), default=-1) + 1)
        super().__init__(bos_id=bos_id, eos_id=eos_id, unk_id=unk_id, pad_id=pad_id,
                         eos_ids=eos_ids, chat_template=chat_template)

    @classmethod
    def from_files(
        cls,
        tokenizer_json: str | os.PathLike,
        tokenizer_config: str | os.PathLike | None = None,
        generation_config: str | os.PathLike | None = None,
        chat_template_file: str | os.PathLike | None = None,
    ) -> HFTokenizer:
        """Load ``tokenizer.json`` and, when given, the files transformers keeps beside it."""
        path = os.fspath(tokenizer_json)
        if not os.path.isfile(path):
            raise ModelNotFoundError(f"{path}: no such tokenizer file")
        try:
            tok = tokenizers.Tokenizer.from_file(path)
        except Exception as e:  # the Rust side raises bare Exception for every parse failure
            raise FormatError(f"{path}: not a valid tokenizer.json ({e})") from None
        c = read_companions(tokenizer_config, generation_config, chat_template_file)

        def role(key: str) -> int | None:
            spelling = c.token(key)
            if spelling is None:
                return None
            i = tok.token_to_id(spelling)
            if i is None:
                raise FormatError(f"{c.config_path}: {key} {spelling!r} is not in {path}")
            return i

        return cls(tok, bos_id=role("bos_token"), eos_id=role("eos_token"),
                   unk_id=role("unk_token"), pad_id=role("pad_token"), eos_ids=c.eos_ids,
                   chat_template=c.chat_template)

    @property
    def backend(self) -> tokenizers.Tokenizer:
        """The wrapped ``tokenizers.Tokenizer`` (for batch encoding, offsets, ...)."""
        return self._tok

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def special_ids(self) -> frozenset[int]:
        return self._special

    # The Rust library raises bare Exception when the tokenizer file it accepted cannot encode or
    # decode after all (e.g. a WordPiece model without its unknown token): a TokenizerError here.
    def _encode(self, text: str, add_special_tokens: bool) -> list[int]:
        try:
            return self._tok.encode(text, add_special_tokens=add_special_tokens).ids
        except Exception as e:  # noqa: BLE001 - the library's only error type; re-raised typed
            raise TokenizerError(f"the tokenizer failed to encode {text[:40]!r}: {e}") from None

    def _decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        try:
            return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)
        except Exception as e:  # noqa: BLE001
            raise TokenizerError(f"the tokenizer failed to decode {ids[:8]}: {e}") from None

    def _id_to_token(self, i: int) -> str:
        token = self._tok.id_to_token(i)
        if token is None:
            raise FormatError(f"token id {i} has no entry in this vocabulary")
        return token

    def _token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    @property
    def tokenizer_config(self) -> dict[str, Any]:
        def token(i: int | None) -> str | None:
            return None if i is None else self._id_to_token(i)

        config: dict[str, Any] = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": token(self.bos_id),
            "eos_token": token(self.eos_id),
            "unk_token": token(self.unk_id),
            "pad_token": token(self.pad_id),
            # decode() must give back the exact text; transformers' clean-up would alter spaces.
            "clean_up_tokenization_spaces": False,
        }
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        return config

    def to_tokenizer_json(self, path: str | os.PathLike) -> None:
        with atomic_write(path, "w") as f:
            f.write(self._tok.to_str())

