"""Broken weight, config and tokenizer files: typed errors, never a silent load (issue 17)."""
import json
import shutil
import struct

import pytest

import toolkit
from toolkit import errors
from toolkit.common.loaders.safetensors_io import SafetensorsFile
from toolkit.core.engine._lib import ffi
from toolkit.fuzz import tiny


def _copy_hf(tiny_hf, tmp_path):
    d = tmp_path / "hf"
    shutil.copytree(tiny_hf, d)
    return d


def _rewrite_header(path, edit):
    """Rewrites a safetensors file with `edit(header bytes, data bytes)` -> (length field, header, data)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    n2, header, data = edit(n, raw[8:8 + n], raw[8 + n:])
    path.write_bytes(struct.pack("<Q", n2) + header + data)


# ---- safetensors ----
@pytest.mark.parametrize("depth", [2000, 100_000])
def test_deeply_nested_safetensors_header(tmp_path, depth):
    p = tmp_path / "deep.safetensors"
    header = b"[" * depth + b"]" * depth
    p.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(errors.FormatError, match="nests too deeply|not an object"):
        SafetensorsFile(p)
    header = b'{"a":' * depth + b"1" + b"}" * depth
    p.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(errors.FormatError):
        SafetensorsFile(p)


def test_header_one_byte_short_is_rejected(tiny_hf, tmp_path):
    d = _copy_hf(tiny_hf, tmp_path)
    st = d / "model.safetensors"
    SafetensorsFile(st).close()  # intact: loads
    # The writer pads the JSON with spaces, so the shortened header still parses: only the
    # coverage check can see that every tensor is now shifted by one byte.
    _rewrite_header(st, lambda n, h, data: (n - 1, h[:-1], h[-1:] + data))
    with pytest.raises(errors.FormatError, match="not fully covered"):
        SafetensorsFile(st)
    with pytest.raises(errors.FormatError):
        toolkit.load(str(d))


def test_trailing_bytes_and_holes_are_rejected(tiny_hf, tmp_path):
    d = _copy_hf(tiny_hf, tmp_path)
    st = d / "model.safetensors"
    good = st.read_bytes()
    st.write_bytes(good + b"\0" * 4)
    with pytest.raises(errors.FormatError, match="not fully covered"):
        SafetensorsFile(st)

    def hole(n, h, data):
        hdr = json.loads(h)
        first = min((v for k, v in hdr.items() if k != "__metadata__"), key=lambda v: v["data_offsets"][0])
        for k, v in hdr.items():
            if k != "__metadata__":
                v["data_offsets"] = [o + 4 for o in v["data_offsets"]]
        assert first["data_offsets"][0] == 4
        raw = json.dumps(hdr).encode()
        raw += b" " * (-len(raw) % 8)
        return len(raw), raw, b"\0" * 4 + data
    st.write_bytes(good)
    _rewrite_header(st, hole)
    with pytest.raises(errors.FormatError, match="belong to no tensor"):
        SafetensorsFile(st)


# ---- configs and metadata ----
BAD_VALUES = [
    ("hidden_size", "64", "must be an int"),
    ("vocab_size", 0, "vocab_size"),
    ("vocab_size", -5, "vocab_size"),
    ("vocab_size", 2**40, "vocab_size"),
    ("vocab_size", 10**9, "shape"),  # a plausible int, but not what the file's tensors hold
    ("num_hidden_layers", 2**31 - 1, "layers"),
    ("num_attention_heads", 0, "num_attention_heads"),
    ("num_attention_heads", 3, "multiple|shape"),
    ("intermediate_size", 97, "shape"),
    ("rope_theta", float("inf"), "rope_theta"),
    ("rope_theta", 1e-45, "rope_theta"),
    ("rope_theta", float("nan"), "rope_theta"),
    ("rope_theta", "1e4", "rope_theta"),
    ("rms_norm_eps", 0.0, "rms_norm_eps"),
    ("rms_norm_eps", float("-inf"), "rms_norm_eps"),
    ("tie_word_embeddings", float("inf"), "tie_word_embeddings"),
    ("tie_word_embeddings", 1, "tie_word_embeddings"),
    ("max_position_embeddings", 0, "max_position_embeddings"),
    ("head_dim", 31, "head_dim"),
    ("bos_token_id", 10**6, "bos_token_id"),
    ("eos_token_id", [2, "x"], "eos_token_id"),
    ("eos_token_id", -1, "eos_token_id"),
]


@pytest.mark.parametrize("key,value,message", BAD_VALUES)
def test_bad_hf_config_values(tiny_hf, tmp_path, key, value, message):
    d = _copy_hf(tiny_hf, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg[key] = value
    # json writes inf/nan as Infinity/NaN, which Python's json reads back: a hostile file can too.
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(errors.FormatError, match=message):
        toolkit.load(str(d))


GGUF_KEYS = {
    "hidden_size": "llama.embedding_length", "vocab_size": "llama.vocab_size",
    "num_hidden_layers": "llama.block_count", "num_attention_heads": "llama.attention.head_count",
    "intermediate_size": "llama.feed_forward_length", "rope_theta": "llama.rope.freq_base",
    "rms_norm_eps": "llama.attention.layer_norm_rms_epsilon",
    "max_position_embeddings": "llama.context_length", "bos_token_id": "tokenizer.ggml.bos_token_id",
}


@pytest.mark.parametrize("key,value,message", [b for b in BAD_VALUES if b[0] in GGUF_KEYS])
def test_bad_gguf_metadata_values(tmp_path, key, value, message):
    p = tmp_path / "bad.gguf"
    tiny.write_tiny_gguf(p, metadata={GGUF_KEYS[key]: value})
    with pytest.raises(errors.ToolkitError) as e:
        toolkit.load(str(p))
    if key != "num_attention_heads":  # 3 heads: a head_dim of 21 that RoPE cannot rotate whole
        assert isinstance(e.value, errors.FormatError), e.value
    assert any(m in str(e.value) for m in message.split("|") + [GGUF_KEYS[key], "rotary"]), str(e.value)


def test_vocab_size_zero_is_not_replaced(tmp_path):
    p = tmp_path / "v0.gguf"
    tiny.write_tiny_gguf(p, metadata={"llama.vocab_size": 0})
    with pytest.raises(errors.FormatError, match="vocab_size"):
        toolkit.load(str(p))


def test_huge_dimensions_fail_before_allocating(tmp_path):
    # 2**31-1 rows of 64 F32 would be 512 GiB of placeholders; the shape check must come first
    # (under a 4 GiB address-space cap the fuzzer saw OutOfMemoryError after the attempt).
    p = tmp_path / "huge.gguf"
    tiny.write_tiny_gguf(p, metadata={"llama.vocab_size": 2**31 - 1})
    with pytest.raises(errors.FormatError, match="shape"):
        toolkit.load(str(p))
    tiny.write_tiny_gguf(p, metadata={"llama.feed_forward_length": 2**30})
    with pytest.raises(errors.FormatError, match="shape"):
        toolkit.load(str(p))


def test_missing_and_extra_tensors(tmp_path):
    p = tmp_path / "untied.gguf"
    tiny.write_tiny_gguf(p, tied=False)
    with toolkit.load(str(p), threads=1) as m:
        assert not m.config.tie_word_embeddings
        m.logits([1, 2])
    p2 = tmp_path / "fewer_layers.gguf"
    tiny.write_tiny_gguf(p2, metadata={"llama.block_count": 3})
    with pytest.raises(errors.FormatError, match="needs"):
        toolkit.load(str(p2))


# ---- tokenizer ----
def test_tokenizer_ids_past_the_vocabulary_are_rejected(tiny_hf, tmp_path):
    d = _copy_hf(tiny_hf, tmp_path)
    tj = json.loads((d / "tokenizer.json").read_text())
    vocab = tj["model"]["vocab"]
    name = next(k for k, v in vocab.items() if v == max(vocab.values()))
    vocab[name] = 1_000_000  # same number of entries, but an id far past the model's 71 rows
    (d / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(errors.FormatError, match="1000000"):
        toolkit.load(str(d))


# ---- alignment ----
def _addr(t):
    return int(ffi.cast("uintptr_t", t.ptr.data))


def test_misaligned_gguf_tensors_are_copied_aligned(tiny_gguf, tmp_path):
    from toolkit.common.loaders.gguf import GGUFFile

    p = tmp_path / "a1.gguf"
    for pad in ("x", "xx"):  # one of the two puts the data section at an odd offset
        tiny.write_tiny_gguf(p, alignment=1, metadata={"general.note": pad})
        with GGUFFile(p) as g:
            odd = [i.name for i in g.tensors.values() if i.offset % 2]
        if odd:
            break
    assert odd, "the alignment-1 file should place some tensors at odd offsets"
    with toolkit.load(str(p), threads=1) as m, toolkit.load(tiny_gguf, threads=1) as ref:
        for name, t in m.model.named_parameters():
            align = 4 if t.dtype == "F32" else 2
            assert _addr(t) % align == 0, (name, t.dtype, _addr(t))
        ids = [3, 4, 5, 6]
        assert m.logits(ids).to_list() == ref.logits(ids).to_list()
        assert m.generate("the", max_new_tokens=4) == ref.generate("the", max_new_tokens=4)


def test_aligned_gguf_tensors_stay_zero_copy(tiny_gguf):
    with toolkit.load(tiny_gguf, threads=1) as m:
        w = m.model.layers[0].self_attn.q_proj.weight
        assert w.dtype == "Q4_1" and w._owner is not None  # borrowed from the mapping


def test_gguf_merge_of_unknown_token_is_format_error(tmp_path):
    p = tmp_path / "merge.gguf"
    tiny.write_tiny_gguf(p, metadata={"tokenizer.ggml.merges": ["Ġ a", "q zz"]})
    with pytest.raises(errors.FormatError, match="inconsistent"):
        toolkit.load(str(p))


def test_tokenizer_that_cannot_encode_is_typed(tiny_hf, tmp_path):
    # A WordPiece model without an unknown token loads, then fails on the first unknown word.
    d = _copy_hf(tiny_hf, tmp_path)
    tj = json.loads((d / "tokenizer.json").read_text())
    tj["model"] = {"type": "WordPiece", "vocab": tj["model"]["vocab"], "unk_token": "[UNK]",
                   "continuing_subword_prefix": "##", "max_input_chars_per_word": 100}
    (d / "tokenizer.json").write_text(json.dumps(tj))
    try:
        m = toolkit.load(str(d), threads=1)
    except errors.FormatError:
        return
    with m:
        with pytest.raises(errors.TokenizerError):
            m.generate("zzz ???", max_new_tokens=1)


def test_gguf_offsets_out_of_table_order_are_rejected(tmp_path):
    # Two same-size tensors with their offsets swapped: every offset is aligned, in bounds and
    # free of overlap, so only the layout check (ggml's own rule) sees that the data is swapped.
    from toolkit.common.loaders.gguf import GGUFFile

    data = bytearray(tiny.tiny_gguf_bytes())

    def offset_field(name):
        raw = name.encode()
        at = data.index(struct.pack("<Q", len(raw)) + raw) + 8 + len(raw)
        n_dims = struct.unpack_from("<I", data, at)[0]
        return at + 4 + 8 * n_dims + 4

    a, b = offset_field("blk.0.attn_norm.weight"), offset_field("blk.0.ffn_norm.weight")
    oa, ob = struct.unpack_from("<Q", data, a)[0], struct.unpack_from("<Q", data, b)[0]
    struct.pack_into("<Q", data, a, ob)
    struct.pack_into("<Q", data, b, oa)
    p = tmp_path / "swapped.gguf"
    p.write_bytes(bytes(data))
    with pytest.raises(errors.FormatError, match="table order"):
        GGUFFile(p)
