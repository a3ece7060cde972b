"""llama.cpp's BPE pre-tokenizers (``tokenizer.ggml.pre``) as HF ``tokenizers`` pre-tokenizers.

llama.cpp splits text with a list of regexes applied one after another, each splitting the pieces
the previous one produced and keeping both matches and the text between them; HF's
``Split(regex, "isolated")`` does exactly that, so each entry below is llama.cpp's regex list
(llama-vocab.cpp) followed by the GPT-2 byte-to-unicode mapping. Only the names listed are
supported; any other name is refused rather than approximated, because a wrong pre-tokenizer
silently changes token ids.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenizers import Regex, pre_tokenizers

from toolkit.errors import UnsupportedError

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
# llama.cpp spells the case-insensitive contractions out as classes; so do we, to match it exactly.
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_LLAMA3 = (
    _CONTRACTIONS
    + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    _CONTRACTIONS
    + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass(frozen=True)
class BPEPreTokenizer:
    regexes: tuple[str, ...]
    # llama.cpp's ignore_merges: a word that is itself in the vocabulary is one token, unmerged.
    ignore_merges: bool = False

    def build(self) -> pre_tokenizers.PreTokenizer:
        steps = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in self.regexes]
        steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
        return pre_tokenizers.Sequence(steps)


_DEFAULT = BPEPreTokenizer((r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"))
_GPT2_FAMILY = BPEPreTokenizer((_GPT2,))
_DIGITS_THEN_GPT2 = BPEPreTokenizer((r"\p{N}", _GPT2))

PRE_TOKENIZERS: dict[str, BPEPreTokenizer] = {
    "default": _DEFAULT,
    "gpt2": _GPT2_FAMILY,
    "gpt-2": _GPT2_FAMILY,
    "phi-2": _GPT2_FAMILY,
    "mpt": _GPT2_FAMILY,
    "olmo": _GPT2_FAMILY,
    "jais": _GPT2_FAMILY,
    "smollm": _DIGITS_THEN_GPT2,
    "starcoder": _DIGITS_THEN_GPT2,
    "refact": _DIGITS_THEN_GPT2,
    "command-r": _DIGITS_THEN_GPT2,
    "codeshell": _DIGITS_THEN_GPT2,
    "llama3": BPEPreTokenizer((_LLAMA3,), ignore_merges=True),
    "llama-v3": BPEPreTokenizer((_LLAMA3,), ignore_merges=True),
    "llama-bpe": BPEPreTokenizer((_LLAMA3,), ignore_merges=True),
    "dbrx": BPEPreTokenizer((_LLAMA3,)),
    "smaug-bpe": BPEPreTokenizer((_LLAMA3,)),
    "qwen2": BPEPreTokenizer((_QWEN2,)),
    "stablelm2": BPEPreTokenizer((_QWEN2,)),
}


def bpe_pre_tokenizer(pre: str) -> BPEPreTokenizer:
    """The pre-tokenizer llama.cpp uses for ``tokenizer.ggml.pre == pre``."""
    try:
        return PRE_TOKENIZERS[pre]
    except KeyError:
        known = ", ".join(sorted(PRE_TOKENIZERS))
        raise UnsupportedError(
            f"GGUF pre-tokenizer {pre!r} is not supported; known: {known}"
        ) from None
