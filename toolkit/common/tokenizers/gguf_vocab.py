"""Rebuild a model's tokenizer from the vocabulary stored in GGUF metadata.

Two vocabulary kinds are supported, both rebuilt as HF ``tokenizers`` objects (so they can also be
exported as ``tokenizer.json``):

* ``gpt2``: byte-level BPE from ``tokens`` and ``merges``, with the pre-tokenizer that
  ``tokenizer.ggml.pre`` names (see ``gguf_pretokenizers``).
* ``llama``: SentencePiece BPE from ``tokens`` and ``scores``. SentencePiece merges the adjacent
  pair whose result has the highest score; an HF BPE whose merge list is ordered by that score
  does the same (HF's ``SentencePieceExtractor``), with byte fallback for characters outside the
  vocabulary and "▁" for spaces.

Token types decide what is matched in the text as a whole token: CONTROL and UNKNOWN are special
(skipped by ``decode(skip_special_tokens=True)``), USER_DEFINED are matched but decoded as text,
as in llama.cpp. A space prefix is added to each text fragment that follows a special token, again
as in llama.cpp (plain sentencepiece never sees special tokens in text).
"""

from __future__ import annotations

import contextlib
import warnings
from enum import IntEnum
from typing import Any, Mapping, Sequence

from tokenizers import AddedToken, decoders, models, normalizers, processors
from tokenizers import Tokenizer as _HFBackend

from toolkit.common.tokenizers.gguf_pretokenizers import bpe_pre_tokenizer
from toolkit.common.tokenizers.hf import HFTokenizer
from toolkit.errors import FormatError, UnsupportedError


class TokenType(IntEnum):
    """``tokenizer.ggml.token_type`` values (llama_token_type)."""

    UNDEFINED = 0
    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


_SPECIAL = (TokenType.CONTROL, TokenType.UNKNOWN)
_MISSING = object()


def _get(md: Mapping[str, Any], key: str, kind: type | tuple, default: Any = _MISSING) -> Any:
    value = md.get(key, _MISSING)
    if value is _MISSING:
        if default is _MISSING:
            raise FormatError(f"GGUF metadata has no {key}")
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise FormatError(f"GGUF metadata {key} has the wrong type ({type(value).__name__})")
    return value


def _get_list(md: Mapping[str, Any], key: str, kind: type | tuple, n: int | None) -> list | None:
    values = _get(md, key, list, None)
    if values is None:
        return None
    if n is not None and len(values) != n:
        raise FormatError(f"GGUF metadata {key} has {len(values)} entries for {n} tokens")
    if not all(isinstance(v, kind) for v in values):
        raise FormatError(f"GGUF metadata {key} holds values that are not {kind}")
    return values


def _special_id(md: Mapping[str, Any], key: str, n: int) -> int | None:
    i = _get(md, key, int, None)
    if i is not None and not 0 <= i < n:
        # llama.cpp warns and ignores such ids ("bad special token"); refusing the whole model
        # over an unused padding id would help nobody.
        warnings.warn(f"GGUF metadata {key} = {i} is outside the vocabulary of {n}; ignored",
                      stacklevel=3)
        return None
    return i


def from_gguf(metadata: Mapping[str, Any]) -> HFTokenizer:
    """The tokenizer described by a GGUF file's metadata (``GGUFFile.metadata``)."""
    model = _get(metadata, "tokenizer.ggml.model", str)
    tokens = _get_list(metadata, "tokenizer.ggml.tokens", str, None)
    if not tokens:
        raise FormatError("GGUF metadata has no tokenizer.ggml.tokens")
    n = len(tokens)
    types = _get_list(metadata, "tokenizer.ggml.token_type", int, n)
    ids = {role: _special_id(metadata, f"tokenizer.ggml.{role}_token_id", n)
           for role in ("bos", "eos", "unknown", "padding", "eot", "eom")}
    if types is None:
        # Without types, only the tokens the metadata names as special can be known as special.
        types = [TokenType.NORMAL] * n
        for i in ids.values():
            if i is not None:
                types[i] = TokenType.CONTROL

    if model == "gpt2":
        merges = _get_list(metadata, "tokenizer.ggml.merges", str, None)
        if merges is None:
            raise FormatError("GGUF metadata has no tokenizer.ggml.merges for a gpt2 vocabulary")
        pre = _get(metadata, "tokenizer.ggml.pre", str, None)
        if pre is None:
            # llama.cpp does the same, with a loud warning: old converters did not record it.
            warnings.warn("GGUF has no tokenizer.ggml.pre; using llama.cpp's 'default' "
                          "pre-tokenizer, which may not be the model's", stacklevel=2)
            pre = "default"
        backend = build_bpe_backend(tokens, merges, types, pre)
        default_add_bos = False
    elif model == "llama":
        scores = _get_list(metadata, "tokenizer.ggml.scores", (int, float), n)
        if scores is None:
            raise FormatError("GGUF metadata has no tokenizer.ggml.scores for a llama vocabulary")
        if _get(metadata, "tokenizer.ggml.remove_extra_whitespaces", bool, False):
            raise UnsupportedError("tokenizer.ggml.remove_extra_whitespaces = true is unsupported")
        backend = build_spm_backend(
            tokens, scores, types,
            add_space_prefix=_get(metadata, "tokenizer.ggml.add_space_prefix", bool, True),
            unk_id=ids["unknown"],
        )
        default_add_bos = True
    else:
        raise UnsupportedError(f"GGUF tokenizer model {model!r} is not supported (gpt2, llama)")

    add_bos = _get(metadata, "tokenizer.ggml.add_bos_token", bool, default_add_bos)
    add_eos = _get(metadata, "tokenizer.ggml.add_eos_token", bool, False)
    if (add_bos and ids["bos"] is None) or (add_eos and ids["eos"] is None):
        raise FormatError("GGUF metadata asks to add BOS/EOS tokens but does not name them")
    post = bos_eos_processor(tokens, ids["bos"] if add_bos else None,
                             ids["eos"] if add_eos else None)
    if post is not None:
        backend.post_processor = post
    return HFTokenizer(
        backend,
        bos_id=ids["bos"],
        eos_id=ids["eos"],
        unk_id=ids["unknown"],
        pad_id=ids["padding"],
        eos_ids=[i for i in (ids["eot"], ids["eom"]) if i is not None],
        chat_template=_get(metadata, "tokenizer.chat_template", str, None),
    )


def _vocab(tokens: Sequence[str]) -> dict[str, int]:
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        seen: set[str] = set()
        dup = next(t for t in tokens if t in seen or seen.add(t))
        raise FormatError(f"GGUF vocabulary lists the token {dup!r} twice")
    return vocab


def _add_token_types(backend: _HFBackend, tokens: Sequence[str], types: Sequence[int]) -> None:
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False)
         for t, ty in zip(tokens, types) if ty in _SPECIAL]
    )
    backend.add_tokens(
        [AddedToken(t, special=False, normalized=False)
         for t, ty in zip(tokens, types) if ty == TokenType.USER_DEFINED]
    )


def build_bpe_backend(
    tokens: Sequence[str], merges: Sequence[str], types: Sequence[int], pre: str
) -> _HFBackend:
    """Byte-level BPE (GPT-2 style) with llama.cpp's pre-tokenizer ``pre``."""
    spec = bpe_pre_tokenizer(pre)
    pairs = []
    for m in merges:
        parts = m.split(" ")
        if len(parts) != 2:
            raise FormatError(f"GGUF merge {m!r} is not two tokens separated by one space")
        pairs.append((parts[0], parts[1]))
    vocab = _vocab(tokens)
    with _library_errors("GGUF BPE vocabulary"):
        model = models.BPE(vocab=vocab, merges=pairs, ignore_merges=spec.ignore_merges)
    backend = _HFBackend(model)
    backend.pre_tokenizer = spec.build()
    backend.decoder = decoders.ByteLevel()
    _add_token_types(backend, tokens, types)
    return backend


def spm_merges(
    pieces: Sequence[str], scores: Sequence[float], types: Sequence[int]
) -> list[tuple[str, str]]:
    """BPE merges that reproduce SentencePiece's highest-score-first merging.

    Every way to split a NORMAL piece into two NORMAL pieces is a merge; merges are ranked by the
    score of the piece they make (ties: the order HF's SentencePieceExtractor uses). Control, byte,
    unknown, user-defined and unused pieces never take part, as in sentencepiece.
    """
    normal = {p: i for i, (p, t) in enumerate(zip(pieces, types)) if t == TokenType.NORMAL}
    ranked = []
    for piece, i in normal.items():
        local = []
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in normal and right in normal:
                local.append((normal[left], normal[right], left, right))
        local.sort()
        ranked.extend((-scores[i], left, right) for _, _, left, right in local)
    ranked.sort(key=lambda m: m[0])  # stable: keeps the per-piece order above
    return [(left, right) for _, left, right in ranked]


def build_spm_backend(
    pieces: Sequence[str],
    scores: Sequence[float],
    types: Sequence[int],
    *,
    add_space_prefix: bool = True,
    unk_id: int | None = None,
) -> _HFBackend:
    """SentencePiece-BPE equivalent: merges from scores, byte fallback, "▁" for spaces."""
    vocab, merges = _vocab(pieces), spm_merges(pieces, scores, types)
    with _library_errors("GGUF SentencePiece vocabulary"):
        model = models.BPE(
            vocab=vocab,
            merges=merges,
            unk_token=None if unk_id is None else pieces[unk_id],
            fuse_unk=True,
            byte_fallback=True,
        )
    backend = _HFBackend(model)
    # A normalizer (not Metaspace) because it runs on every fragment between special tokens and
    # prepends "▁" even when the text already starts with a space, exactly like sentencepiece's
    # dummy prefix.
    replace = normalizers.Replace(" ", "▁")
    backend.normalizer = (
        normalizers.Sequence([normalizers.Prepend("▁"), replace]) if add_space_prefix else replace
    )
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_space_prefix:
        steps.append(decoders.Strip(" ", 1, 0))  # the dummy prefix's space
    backend.decoder = decoders.Sequence(steps)
    _add_token_types(backend, pieces, types)
    return backend


def bos_eos_processor(tokens: Sequence[str], bos: int | None, eos: int | None):
    """The post-processor adding ``bos`` before and ``eos`` after (None: nothing on that side)."""
    if bos is None and eos is None:
        return None
    pre = [tokens[bos]] if bos is not None else []
    post = [tokens[eos]] if eos is not None else []
    single = " ".join(pre + ["$A"] + post)
    second = [f"{t}:1" for t in pre] + ["$B:1"] + [f"{t}:1" for t in post]
    pair = " ".join(pre + ["$A"] + post + second)
    specials = [(tokens[i], i) for i in {bos, eos} if i is not None]
    with _library_errors("GGUF BOS/EOS tokens"):
        return processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)


@contextlib.contextmanager
def _library_errors(what: str):
    """The tokenizers library raises bare Exception for every inconsistency it finds (a merge of a
    token that is not in the vocabulary, ...); in a file we read that is a FormatError."""
    try:
        yield
    except FormatError:
        raise
    except Exception as e:  # noqa: BLE001 - the library's only error type; re-raised typed
        raise FormatError(f"{what} is inconsistent: {e}") from None
