"""SentencePiece tokenizers: the sentencepiece wrapper and the llama vocabulary rebuilt as GGUF
metadata, both checked id-for-id against sentencepiece itself on the Llama 2 model."""

import json

import pytest
import sentencepiece as spm

from toolkit.common.loaders.gguf_write import GGUFValue, write_gguf
from toolkit.common.loaders.gguf import GGUFValueType
from toolkit.common.tokenizers import HFTokenizer, SentencePieceTokenizer, from_gguf, load_tokenizer
from toolkit.errors import FormatError, ModelNotFoundError, TokenizerError, UnsupportedError

TEXTS = [
    "Hello, world!",
    " leading space",
    "  two leading spaces",
    "trailing spaces   ",
    "double  inner   spaces",
    "line one\nline two\n\nline four\n",
    "\ttabs\tand\r\nCRLF",
    "digits 0123456789 3.14159 1e-10 2024-01-01",
    "emoji 🦙🦙 and 😀👨‍👩‍👧",
    "你好世界，这是中文。",
    "日本語のテキスト와 한국어",
    "Ångström naïve café São Paulo Dvořák Straße",
    "def f(x):\n    return x ** 2  # square\n",
    '{"key": [1, 2, 3], "nested": {"a": null}}',
    "don't can't won't I'm",
    "",
    " ",
    "\n",
    "▁already has the marker",
    "math ∑ √2 ≈ 1.414 ½",
    "zero\u200bwidth",
]


def roundtrip(text):
    # SentencePiece stores spaces as "▁", so a "▁" in the text comes back as a space.
    return text.replace("▁", " ")


@pytest.fixture(scope="module")
def sp(llama2_model_path):
    return spm.SentencePieceProcessor(model_file=str(llama2_model_path))


@pytest.fixture(scope="module")
def llama_metadata(sp):
    """The Llama 2 vocabulary as a llama.cpp converter would store it in GGUF."""
    n = sp.get_piece_size()

    def kind(i):
        if sp.is_control(i):
            return 3
        if sp.is_unknown(i):
            return 2
        if sp.is_byte(i):
            return 6
        return 1

    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": [sp.id_to_piece(i) for i in range(n)],
        "tokenizer.ggml.scores": [sp.get_score(i) for i in range(n)],
        "tokenizer.ggml.token_type": [kind(i) for i in range(n)],
        "tokenizer.ggml.bos_token_id": sp.bos_id(),
        "tokenizer.ggml.eos_token_id": sp.eos_id(),
        "tokenizer.ggml.unknown_token_id": sp.unk_id(),
        "tokenizer.ggml.add_bos_token": True,
    }


@pytest.fixture(scope="module")
def spm_tok(llama2_model_path):
    return SentencePieceTokenizer(llama2_model_path)


@pytest.fixture(scope="module")
def gguf_tok(llama_metadata):
    return from_gguf(llama_metadata)


def stream_all(tok, ids, **kw):
    s = tok.stream(**kw)
    chunks = [s.step(i) for i in ids] + [s.flush()]
    assert not any("\ufffd" in c for c in chunks)
    return "".join(chunks)


def assert_matches_sentencepiece(tok, sp):
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == sp.encode(text), text
        assert tok.decode(ids) == sp.decode(ids) == roundtrip(text)
        assert stream_all(tok, ids) == roundtrip(text)
    assert tok.encode("Hi", add_special_tokens=True) == [1] + sp.encode("Hi")


def test_wrapper_matches_sentencepiece(spm_tok, sp):
    assert spm_tok.vocab_size == 32000
    assert (spm_tok.bos_id, spm_tok.eos_id, spm_tok.unk_id, spm_tok.pad_id) == (1, 2, 0, None)
    assert spm_tok.special_ids == {0, 1, 2}
    assert_matches_sentencepiece(spm_tok, sp)


def test_wrapper_streams_byte_fallback(spm_tok):
    ids = spm_tok.encode("🦙")
    assert ids == [29871, 243, 162, 169, 156]  # "▁" then four byte pieces
    s = spm_tok.stream()
    assert [s.step(i) for i in ids] == ["", "", "", "", "🦙"]  # the space is held with the emoji
    assert s.flush() == ""
    assert spm_tok.decode(ids) == "🦙"


def test_wrapper_control_tokens_follow_sentencepiece(spm_tok, sp):
    # sentencepiece never matches control pieces written in text, and never prints them.
    assert spm_tok.encode("<s>") == sp.encode("<s>") == [529, 29879, 29958]
    assert spm_tok.decode([1, 15043, 2]) == "Hello"
    assert spm_tok.decode([15043, 0]) == "Hello ⁇ "
    assert spm_tok.decode([15043, 0], skip_special_tokens=True) == "Hello"
    assert spm_tok.token_to_id("▁Hello") == 15043
    assert spm_tok.token_to_id("definitely not a piece") is None  # not unk's id
    assert spm_tok.id_to_token(15043) == "▁Hello"


def test_wrapper_bad_input(spm_tok, tmp_path):
    with pytest.raises(TokenizerError):
        spm_tok.encode(["list"])
    with pytest.raises(TokenizerError):
        spm_tok.decode([32000])
    with pytest.raises(ModelNotFoundError):
        SentencePieceTokenizer(tmp_path / "missing.model")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a protobuf")
    with pytest.raises(FormatError, match="not a sentencepiece model"):
        SentencePieceTokenizer(bad)


def test_gguf_llama_vocab_matches_sentencepiece(gguf_tok, sp):
    assert gguf_tok.vocab_size == 32000
    assert_matches_sentencepiece(gguf_tok, sp)


def test_gguf_llama_vocab_special_tokens_in_text(gguf_tok):
    # Unlike sentencepiece (and like llama.cpp / HF), control tokens in the text are matched, and
    # the text after one gets its own "▁" prefix.
    assert gguf_tok.encode("<s>Hello</s>") == [1, 15043, 2]
    assert gguf_tok.decode([1, 15043, 2], skip_special_tokens=True) == "Hello"
    assert gguf_tok.decode([1, 15043, 2]) == "<s> Hello</s>"


def test_gguf_llama_vocab_without_space_prefix(llama_metadata, sp):
    t = from_gguf(dict(llama_metadata, **{"tokenizer.ggml.add_space_prefix": False}))
    assert t.encode("Hello") == [sp.piece_to_id("Hello")]
    assert t.decode(t.encode(" Hello")) == " Hello"


def test_gguf_file_roundtrip_and_export(llama_metadata, sp, tmp_path):
    md = dict(llama_metadata)
    md["tokenizer.ggml.token_type"] = GGUFValue(
        GGUFValueType.ARRAY, GGUFValue(GGUFValueType.INT32, md["tokenizer.ggml.token_type"]))
    write_gguf(tmp_path / "vocab.gguf", md, {})
    t = load_tokenizer(tmp_path / "vocab.gguf")
    assert t.encode(TEXTS[8]) == sp.encode(TEXTS[8])

    t.save(tmp_path / "exported")
    again = load_tokenizer(tmp_path / "exported")
    assert isinstance(again, HFTokenizer)
    for text in TEXTS:
        assert again.encode(text) == sp.encode(text), text
    assert again.encode("x", add_special_tokens=True)[0] == 1


def test_wrapper_export_and_directory_loading(spm_tok, sp, llama2_model_path, tmp_path):
    spm_tok.save(tmp_path / "exported")
    exported = load_tokenizer(tmp_path / "exported")
    assert isinstance(exported, HFTokenizer)
    for text in TEXTS:
        assert exported.encode(text) == sp.encode(text), text
    assert exported.encode("Hi", add_special_tokens=True) == [1] + sp.encode("Hi")
    assert (exported.bos_id, exported.eos_id, exported.unk_id) == (1, 2, 0)
    assert spm_tok.tokenizer_config["add_bos_token"] is True

    only_model = tmp_path / "spm_only"
    only_model.mkdir()
    (only_model / "tokenizer.model").write_bytes(llama2_model_path.read_bytes())
    (only_model / "tokenizer_config.json").write_text(
        json.dumps({"add_bos_token": False, "chat_template": "{{ messages[0]['content'] }}"}))
    (only_model / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7]}))
    t = load_tokenizer(only_model)
    assert isinstance(t, SentencePieceTokenizer)
    assert t.encode("Hi", add_special_tokens=True) == sp.encode("Hi")  # no BOS, per config
    assert t.eos_ids == {2, 7}
    assert t.apply_chat_template([{"role": "user", "content": "yo"}]) == "yo"


def test_bad_end_of_turn_id_in_config(llama2_model_path, tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "tokenizer.model").write_bytes(llama2_model_path.read_bytes())
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 99999]}))
    with pytest.raises(FormatError, match="end-of-turn token id 99999"):
        load_tokenizer(d)


def test_export_refuses_a_model_it_cannot_reproduce(llama2_model_path, monkeypatch):
    t = SentencePieceTokenizer(llama2_model_path)
    # Stand-in for a unigram or NFKC model: sentencepiece's own ids differ from the BPE rebuild.
    monkeypatch.setattr(t, "_encode", lambda text, add: [5] * len(text))
    with pytest.raises(UnsupportedError, match="cannot be rebuilt"):
        t.to_hf()
