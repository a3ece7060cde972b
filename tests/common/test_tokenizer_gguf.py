"""The SmolLM2 tokenizer rebuilt from GGUF metadata, checked against the golden ids."""

import json

import pytest
from tokenizers import pre_tokenizers

from toolkit.common.loaders.gguf import GGUFFile
from toolkit.common.tokenizers import HFTokenizer, from_gguf, load_tokenizer
from toolkit.common.tokenizers.gguf_pretokenizers import PRE_TOKENIZERS, bpe_pre_tokenizer
from toolkit.errors import FormatError, TokenizerError, UnsupportedError


@pytest.fixture(scope="module")
def metadata(smollm2_gguf_path):
    with GGUFFile(smollm2_gguf_path) as g:
        return g.metadata


@pytest.fixture(scope="module")
def tok(metadata):
    return from_gguf(metadata)


def cases(golden):
    return [(c["text"], c["ids"]) for c in golden["strings"] + golden["chat_templates"]]


def test_golden_ids(tok, golden_tokenization):
    for text, ids in cases(golden_tokenization):
        assert tok.encode(text) == ids, text


def test_golden_decode(tok, golden_tokenization):
    for text, ids in cases(golden_tokenization):
        assert tok.decode(ids) == text


def test_streaming_equals_decode(tok, golden_tokenization):
    for text, ids in cases(golden_tokenization):
        stream = tok.stream()
        chunks = [stream.step(i) for i in ids]
        chunks.append(stream.flush())
        assert "".join(chunks) == text
        assert not any("\ufffd" in c for c in chunks), text  # never a split character


def test_streaming_holds_partial_characters(tok):
    ids = tok.encode("😀")
    assert len(ids) == 3  # one emoji, three byte-level tokens
    stream = tok.stream()
    assert [stream.step(i) for i in ids] == ["", "", "😀"]
    assert stream.flush() == ""


def test_streaming_flush_of_incomplete_character(tok):
    ids = tok.encode("a😀")
    stream = tok.stream()
    out = "".join(stream.step(i) for i in ids[:-1])
    assert out == "a"
    assert out + stream.flush() == tok.decode(ids[:-1])  # the tail shows as decode shows it
    assert stream.step(tok.encode("b")[0]) == "b"  # flush reset the stream


def test_special_tokens(tok):
    assert (tok.bos_id, tok.eos_id, tok.unk_id, tok.pad_id) == (1, 2, 0, 2)
    assert tok.eos_ids == {2}
    assert tok.vocab_size == 49152
    assert tok.special_ids == frozenset(range(17))
    assert tok.encode("<|im_start|>user") == [1, 4093]
    assert tok.encode("Hi", add_special_tokens=True) == tok.encode("Hi")  # SmolLM2 adds no BOS
    ids = tok.encode("<|im_start|>Hi<|im_end|>")
    assert tok.decode(ids, skip_special_tokens=True) == "Hi"
    stream = tok.stream(skip_special_tokens=True)
    assert "".join(stream.step(i) for i in ids) + stream.flush() == "Hi"
    assert tok.id_to_token(2) == "<|im_end|>"
    assert tok.token_to_id("<|im_end|>") == 2
    assert tok.token_to_id("no such token at all") is None


def test_bad_input(tok):
    with pytest.raises(TokenizerError, match="needs a str"):
        tok.encode(b"bytes")
    with pytest.raises(TokenizerError, match="needs a str"):
        tok.encode(None)
    for bad in ([-1], [49152], [1.0], [True], "abc", 5):
        with pytest.raises(TokenizerError):
            tok.decode(bad)
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        tok.id_to_token(10**6)
    with pytest.raises(TokenizerError):
        tok.stream().step(-3)
    with pytest.raises(TokenizerError):
        tok.token_to_id(3)


def test_tokenizer_json_roundtrip(tok, golden_tokenization, tmp_path):
    path = tmp_path / "tokenizer.json"
    tok.to_tokenizer_json(path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(tok.tokenizer_config))
    again = HFTokenizer.from_files(path, tmp_path / "tokenizer_config.json")
    for text, ids in cases(golden_tokenization):
        assert again.encode(text) == ids
    assert (again.bos_id, again.eos_id, again.unk_id, again.pad_id) == (1, 2, 0, 2)
    assert again.chat_template == tok.chat_template
    assert again.special_ids == tok.special_ids


def test_save_and_load_tokenizer_dir(tok, golden_tokenization, tmp_path, smollm2_gguf_path):
    tok.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, HFTokenizer)
    text, ids = cases(golden_tokenization)[-1]
    assert loaded.encode(text) == ids
    from_file = load_tokenizer(smollm2_gguf_path)
    assert from_file.encode(text) == ids


def test_unsupported_pre_tokenizer(metadata):
    md = dict(metadata, **{"tokenizer.ggml.pre": "tekken"})
    with pytest.raises(UnsupportedError, match="'tekken'"):
        from_gguf(md)


def test_missing_pre_tokenizer_warns_and_uses_default(metadata):
    md = {k: v for k, v in metadata.items() if k != "tokenizer.ggml.pre"}
    with pytest.warns(UserWarning, match="default"):
        t = from_gguf(md)
    # llama.cpp's default cuts digit runs into threes; smollm splits every digit.
    pieces = [p for p, _ in t.backend.pre_tokenizer.pre_tokenize_str("12345")]
    assert pieces == ["123", "45"]


def test_unsupported_model_and_bad_metadata(metadata):
    with pytest.raises(UnsupportedError, match="'bert'"):
        from_gguf(dict(metadata, **{"tokenizer.ggml.model": "bert"}))
    with pytest.raises(FormatError, match="no tokenizer.ggml.model"):
        from_gguf({})
    with pytest.raises(FormatError, match="token_type has 3 entries"):
        from_gguf(dict(metadata, **{"tokenizer.ggml.token_type": [1, 1, 1]}))
    with pytest.raises(FormatError, match="not two tokens"):
        from_gguf(dict(metadata, **{"tokenizer.ggml.merges": ["a b c"]}))
    tokens = list(metadata["tokenizer.ggml.tokens"])
    tokens[5] = tokens[6]
    with pytest.raises(FormatError, match="twice"):
        from_gguf(dict(metadata, **{"tokenizer.ggml.tokens": tokens}))


def test_out_of_range_special_id_is_ignored_with_warning(metadata):
    with pytest.warns(UserWarning, match="padding_token_id = 99999"):
        t = from_gguf(dict(metadata, **{"tokenizer.ggml.padding_token_id": 99999}))
    assert t.pad_id is None


def test_add_bos_from_metadata(metadata):
    t = from_gguf(dict(metadata, **{"tokenizer.ggml.add_bos_token": True}))
    assert t.encode("Hi", add_special_tokens=True) == [1] + t.encode("Hi")


def splits(pre, text):
    return [s for s, _ in bpe_pre_tokenizer(pre).build().pre_tokenize_str(text)]


def test_pre_tokenizer_table():
    for pre in PRE_TOKENIZERS:
        bpe_pre_tokenizer(pre).build()  # every regex compiles
    # byte-level mapping shows a space as "Ġ"
    assert splits("smollm", "ab 123") == ["ab", "Ġ", "1", "2", "3"]
    assert splits("gpt2", "ab 123") == ["ab", "Ġ123"]
    assert splits("llama-bpe", "ab 12345") == ["ab", "Ġ", "123", "45"]
    assert splits("llama-bpe", "I'M here") == ["I", "'M", "Ġhere"]
    assert splits("qwen2", "x 12") == ["x", "Ġ", "1", "2"]
    assert splits("default", "a+=1234") == ["a", "+=", "123", "4"]
    assert isinstance(bpe_pre_tokenizer("smollm").build(), pre_tokenizers.Sequence)
