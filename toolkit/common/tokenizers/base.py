"""The tokenizer interface every backend implements, with input checks and streaming decode.

Subclasses wrap one library (HF ``tokenizers``, ``sentencepiece``) and supply ``_encode``,
``_decode`` and the vocabulary look-ups; this class validates what users pass in, so every backend
fails the same way (TokenizerError) on bad text or ids. It parses no file format; ``save`` only
writes what the subclass describes.
"""

from __future__ import annotations

import abc
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

from toolkit.common.atomic import atomic_write
from toolkit.common import validate
from toolkit.common.chat_template import render_chat_template
from toolkit.errors import FormatError, TokenizerError


class Tokenizer(abc.ABC):
    """Text <-> token ids for one model.

    Special tokens written in the text (e.g. ``<|im_start|>``) are encoded as single tokens where
    the backend supports that (see each subclass). ``eos_ids`` holds every id that ends a turn.
    """

    def __init__(
        self,
        *,
        bos_id: int | None = None,
        eos_id: int | None = None,
        unk_id: int | None = None,
        pad_id: int | None = None,
        eos_ids: Iterable[int] = (),
        chat_template: str | None = None,
    ):
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.unk_id = unk_id
        self.pad_id = pad_id
        ids = set(eos_ids)
        if eos_id is not None:
            ids.add(eos_id)
        self.eos_ids = frozenset(ids)
        self.chat_template = chat_template
        # Roles come from config files, so a bad id here is a broken file, not a caller's mistake.
        roles = [("bos", bos_id), ("eos", eos_id), ("unk", unk_id), ("pad", pad_id)]
        roles += [("end-of-turn", i) for i in self.eos_ids]
        for what, i in roles:
            if i is not None:
                try:
                    self._check_id(i, f"{what} token id")
                except TokenizerError as e:
                    raise FormatError(f"special tokens: {e}") from None

    # -- what a backend supplies -------------------------------------------------------------
    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of ids, including added/special tokens: valid ids are 0 .. vocab_size-1."""

    @property
    @abc.abstractmethod
    def special_ids(self) -> frozenset[int]:
        """Ids that ``decode(..., skip_special_tokens=True)`` leaves out."""

    @abc.abstractmethod
    def _encode(self, text: str, add_special_tokens: bool) -> list[int]: ...

    @abc.abstractmethod
    def _decode(self, ids: list[int], skip_special_tokens: bool) -> str: ...

    @abc.abstractmethod
    def _id_to_token(self, i: int) -> str: ...

    @abc.abstractmethod
    def _token_to_id(self, token: str) -> int | None: ...

    @property
    @abc.abstractmethod
    def tokenizer_config(self) -> dict[str, Any]:
        """The ``tokenizer_config.json`` contents that describe this tokenizer to transformers."""

    @abc.abstractmethod
    def to_tokenizer_json(self, path: str | os.PathLike) -> None:
        """Write an HF ``tokenizer.json`` that encodes like this tokenizer."""

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` (HF layout) into ``directory``."""
        os.makedirs(directory, exist_ok=True)
        self.to_tokenizer_json(os.path.join(directory, "tokenizer.json"))
        with atomic_write(os.path.join(directory, "tokenizer_config.json"), "w") as f:
            json.dump(self.tokenizer_config, f, indent=2, ensure_ascii=False)

    # -- public API -------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``; ``add_special_tokens`` adds BOS/EOS if the model uses them."""
        return self._encode(validate.text(text, "encode() text"), add_special_tokens)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self._decode(self._check_ids(ids), skip_special_tokens)

    def id_to_token(self, i: int) -> str:
        return self._id_to_token(self._check_id(i))

    def token_to_id(self, token: str) -> int | None:
        """The id of vocabulary entry ``token`` (exact string), or None if there is none."""
        if not isinstance(token, str):
            raise TokenizerError(f"token_to_id() needs a str, got {type(token).__name__}")
        return self._token_to_id(token)

    def stream(self, skip_special_tokens: bool = False) -> StreamDecoder:
        """A decoder fed one id at a time that returns text as soon as it is final."""
        return StreamDecoder(self, skip_special_tokens)

    def apply_chat_template(
        self, messages: list[dict], add_generation_prompt: bool = True, **extra: Any
    ) -> str:
        """Render ``messages`` with this tokenizer's chat template (``render_chat_template``)."""
        if self.chat_template is None:
            raise TokenizerError("this tokenizer has no chat template")

        def token(i: int | None) -> str | None:
            return None if i is None else self._id_to_token(i)
        return render_chat_template(
            self.chat_template,
            messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=token(self.bos_id),
            eos_token=token(self.eos_id),
            **extra,
        )

    # -- checks ---------------------------------------------------------------------------------
    def _check_id(self, i: Any, what: str = "token id") -> int:
        # bool is an int subclass, but True as a token id is always a caller's mistake.
        if not isinstance(i, int) or isinstance(i, bool):
            raise TokenizerError(f"{what} must be an int, got {type(i).__name__}")
        if not 0 <= i < self.vocab_size:
            raise TokenizerError(
                f"{what} {i} is outside the vocabulary (0 .. {self.vocab_size - 1})"
            )
        return i

    def _check_ids(self, ids: Sequence[int]) -> list[int]:
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
            raise TokenizerError(f"token ids must be a sequence of ints, got {type(ids).__name__}")
        ids = list(ids)
        n = self.vocab_size
        for i in ids:
            if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < n:
                self._check_id(i)  # raises with the precise message
        return ids

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(vocab_size={self.vocab_size}, bos={self.bos_id}, eos={self.eos_id})"


class StreamDecoder:
    """Incremental decode that never splits a character and keeps spaces exactly as ``decode``.

    Each step decodes a short window twice, once up to the text already emitted and once with the
    new id, and emits the difference once it no longer ends in an incomplete UTF-8 sequence
    (U+FFFD). Decoding a window rather than single ids is what keeps byte-fallback pieces together
    and word-initial spaces right (TGI's algorithm; model-agnostic).
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False):
        self._tok = tokenizer
        self._skip = skip_special_tokens
        self._window: list[int] = []  # the ids emitted last time, then the ids not yet emitted
        self._read = 0  # window[:read] is text that was already emitted

    def step(self, token_id: int) -> str:
        """Feed one id; return the newly final text ('' while a character is incomplete)."""
        self._window.append(self._tok._check_id(token_id))
        return self._advance(final=False)

    def flush(self) -> str:
        """Return whatever is pending (an incomplete character decodes as U+FFFD) and reset."""
        text = self._advance(final=True)
        self._window, self._read = [], 0
        return text

    def _advance(self, final: bool) -> str:
        done = self._tok._decode(self._window[: self._read], self._skip)
        text = self._tok._decode(self._window, self._skip)
        if final or (len(text) > len(done) and not text.endswith("\ufffd")):
            # The ids before the last emitted ones can no longer change the output: drop them.
            del self._window[: self._read]
            self._read = len(self._window)
            return text[len(done) :]
        return ""
