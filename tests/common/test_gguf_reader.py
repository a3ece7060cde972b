"""GGUF reader: the real SmolLM2 file, files built by our writer, and damaged copies of them."""

import gc
import struct
import warnings

import pytest

from toolkit.common.loaders.ggml_types import GGML_TYPES, GGML_TYPE_IDS, tensor_nbytes
from toolkit.common.loaders.gguf import SUPPORTED, GGUFFile, GGUFValueType
from toolkit.common.loaders.gguf_write import GGUFValue, gguf_bytes, write_gguf
from toolkit.errors import (
    ClosedError,
    FormatError,
    ModelNotFoundError,
    ShapeError,
    UnsupportedError,
)

F32, Q8_0, Q4_1 = GGML_TYPE_IDS["F32"], GGML_TYPE_IDS["Q8_0"], GGML_TYPE_IDS["Q4_1"]


def small_file(**kw):
    """Metadata of every kind plus two tensors; returns the file's bytes."""
    metadata = {
        "general.architecture": "llama",
        "llama.block_count": 2,
        "llama.rope.freq_base": 10000.0,
        "flag": True,
        "signed": GGUFValue(GGUFValueType.INT64, -(2**40)),
        "tokens": ["a", "b", "ü"],
        "scores": GGUFValue(GGUFValueType.ARRAY, GGUFValue(GGUFValueType.FLOAT32, [0.5, -1.0])),
        "nested": [[1, 2], [3]],
    }
    tensors = {
        "w": (F32, (3, 2), struct.pack("<6f", *range(6))),
        "q": (Q8_0, (32, 2), bytes(range(68))),
    }
    return gguf_bytes(metadata, tensors, **kw)


def write(tmp_path, data, name="m.gguf"):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_real_file_layout(smollm2_gguf_path):
    with GGUFFile(smollm2_gguf_path) as g:
        assert g.version == 3
        assert g.metadata["general.architecture"] == "llama"
        assert g.metadata["llama.block_count"] == 30
        assert len(g.metadata["tokenizer.ggml.tokens"]) == 49152
        assert len(g.tensors) == 272 and g.alignment == 32
        emb = g.tensors["token_embd.weight"]
        assert (emb.type_name, emb.shape) == ("Q8_0", (576, 49152))
        assert emb.nbytes == 576 * 49152 // 32 * 34
        for i in range(30):
            assert g.tensors[f"blk.{i}.attn_q.weight"].type_name == "Q4_1"
            assert g.tensors[f"blk.{i}.attn_k.weight"].shape == (576, 192)
            assert g.tensors[f"blk.{i}.attn_norm.weight"].type_name == "F32"
        assert "output.weight" not in g.tensors  # tied embeddings
        # The last tensor ends exactly at the end of the file.
        last = max(g.tensors.values(), key=lambda t: t.offset)
        assert last.offset + last.nbytes == g.file_size
        for name in g.tensors:
            g.check_supported(name)
        norm = g.tensor_bytes("output_norm.weight")
        assert norm.readonly and len(norm) == 576 * 4
        with open(smollm2_gguf_path, "rb") as f:
            f.seek(g.tensors["output_norm.weight"].offset)
            assert norm.tobytes() == f.read(576 * 4)
        norm.release()


def test_roundtrip_through_writer(tmp_path):
    p = write(tmp_path, small_file())
    with GGUFFile(p) as g:
        assert g.metadata["llama.block_count"] == 2
        assert g.metadata_types["llama.block_count"] == GGUFValueType.UINT32
        assert g.metadata["signed"] == -(2**40)
        assert g.metadata["flag"] is True
        assert g.metadata["tokens"] == ["a", "b", "ü"]
        assert g.metadata["scores"] == [0.5, -1.0]
        assert g.metadata["nested"] == [[1, 2], [3]]
        assert g.tensors["w"].shape == (3, 2)
        assert g.tensors["w"].offset % 32 == 0
        assert struct.unpack("<6f", g.tensor_bytes("w")) == tuple(map(float, range(6)))
        assert g.tensor_bytes("q").tobytes() == bytes(range(68))


def test_custom_alignment(tmp_path):
    p = write(tmp_path, small_file(alignment=64))
    with GGUFFile(p) as g:
        assert g.alignment == 64
        assert all(t.offset % 64 == 0 for t in g.tensors.values())


def test_write_gguf_atomic(tmp_path):
    p = tmp_path / "x.gguf"
    write_gguf(p, {"a": 1}, {"w": (F32, (4,), bytes(16))})
    with GGUFFile(p) as g:
        assert g.tensors["w"].nbytes == 16
    with pytest.raises(ShapeError):  # wrong size: nothing written, old file intact
        write_gguf(p, {"a": 2}, {"w": (F32, (4,), bytes(15))})
    with GGUFFile(p) as g:
        assert g.metadata["a"] == 1
    assert [f.name for f in tmp_path.iterdir()] == ["x.gguf"]


@pytest.mark.parametrize("type_id", sorted(GGML_TYPES))
def test_every_ggml_type_size(tmp_path, type_id):
    t = GGML_TYPES[type_id]
    shape = (t.block_size * 2, 3)
    nbytes = tensor_nbytes(type_id, shape)
    assert nbytes == 6 * t.type_size
    p = write(tmp_path, gguf_bytes({}, {"t": (type_id, shape, bytes(nbytes))}))
    with GGUFFile(p) as g:
        assert g.tensors["t"].nbytes == nbytes and g.tensors["t"].type_name == t.name
        if t.name in SUPPORTED:
            g.check_supported("t")
        else:
            with pytest.raises(UnsupportedError, match=f"'t' is stored as {t.name}"):
                g.check_supported("t")


def test_known_block_sizes():
    # Spot checks against ggml's block structs.
    assert tensor_nbytes(GGML_TYPE_IDS["Q4_0"], (32,)) == 18
    assert tensor_nbytes(Q4_1, (576, 576)) == 576 * 18 * 20
    assert tensor_nbytes(GGML_TYPE_IDS["Q4_K"], (256,)) == 144
    assert tensor_nbytes(GGML_TYPE_IDS["Q6_K"], (512, 2)) == 4 * 210
    assert tensor_nbytes(GGML_TYPE_IDS["BF16"], (7, 3)) == 42


# -- damaged files ------------------------------------------------------------------------------
def corrupt(tmp_path, data):
    return write(tmp_path, bytes(data), "bad.gguf")


def test_bad_magic(tmp_path):
    data = bytearray(small_file())
    data[0:4] = b"GGML"
    with pytest.raises(FormatError, match="not a GGUF file"):
        GGUFFile(corrupt(tmp_path, data))


def test_too_short(tmp_path):
    with pytest.raises(FormatError, match="too short"):
        GGUFFile(corrupt(tmp_path, b"GGUF\x03\0\0\0"))


@pytest.mark.parametrize(
    "version, error, message",
    [(1, UnsupportedError, "version 1"), (0x03000000, UnsupportedError, "big-endian"),
     (7, FormatError, "unknown GGUF version 7")],
)
def test_versions(tmp_path, version, error, message):
    data = bytearray(small_file())
    struct.pack_into("<I", data, 4, version)
    with pytest.raises(error, match=message):
        GGUFFile(corrupt(tmp_path, data))


def test_absurd_counts(tmp_path):
    data = bytearray(small_file())
    struct.pack_into("<Q", data, 8, 10**12)  # tensor count
    with pytest.raises(FormatError, match="more than the file can hold"):
        GGUFFile(corrupt(tmp_path, data))
    data = bytearray(small_file())
    struct.pack_into("<Q", data, 16, 2**63)  # metadata count
    with pytest.raises(FormatError, match="more than the file can hold"):
        GGUFFile(corrupt(tmp_path, data))


@pytest.mark.parametrize("cut", [30, 60, 200, 400])
def test_truncated_in_header(tmp_path, cut):
    data = small_file()
    with pytest.raises(FormatError, match="truncated|past the end"):
        GGUFFile(corrupt(tmp_path, data[:cut]))


def test_truncated_tensor_data(tmp_path):
    data = small_file()
    with pytest.raises(FormatError, match="runs past the end of the file"):
        GGUFFile(corrupt(tmp_path, data[:-10]))


def test_string_length_past_eof(tmp_path):
    data = bytearray(gguf_bytes({"k": "value"}, {}))
    # header (24) + key length (8) + "k" + value type (4) -> value length
    struct.pack_into("<Q", data, 24 + 8 + 1 + 4, 10**9)
    with pytest.raises(FormatError, match="truncated: metadata 'k'"):
        GGUFFile(corrupt(tmp_path, data))


def test_array_count_past_eof(tmp_path):
    data = bytearray(gguf_bytes({"k": ["x", "y"]}, {}))
    struct.pack_into("<Q", data, 24 + 8 + 1 + 4 + 4, 10**10)
    with pytest.raises(FormatError, match="claims 10000000000 elements"):
        GGUFFile(corrupt(tmp_path, data))
    data = bytearray(gguf_bytes({"k": [1, 2]}, {}))
    struct.pack_into("<Q", data, 24 + 8 + 1 + 4 + 4, 10**10)
    with pytest.raises(FormatError, match="truncated"):
        GGUFFile(corrupt(tmp_path, data))


def test_unknown_value_type(tmp_path):
    data = bytearray(gguf_bytes({"k": 5}, {}))
    struct.pack_into("<I", data, 24 + 8 + 1, 99)
    with pytest.raises(FormatError, match="unknown value type 99"):
        GGUFFile(corrupt(tmp_path, data))


def test_invalid_utf8_key(tmp_path):
    data = bytearray(gguf_bytes({"k": 5}, {}))
    data[24 + 8] = 0xFF
    with pytest.raises(FormatError, match="not valid UTF-8"):
        GGUFFile(corrupt(tmp_path, data))


def test_duplicate_key(tmp_path):
    data = bytes(gguf_bytes({"ka": 5, "kb": 6}, {}))
    data = data.replace(b"kb", b"ka")
    with pytest.raises(FormatError, match="'ka' appears twice"):
        GGUFFile(corrupt(tmp_path, data))


def test_bad_alignment(tmp_path):
    data = gguf_bytes({"general.alignment": GGUFValue(GGUFValueType.UINT32, 48)}, {})
    with pytest.raises(FormatError, match="not a power of two"):
        GGUFFile(corrupt(tmp_path, data))
    data = gguf_bytes({"general.alignment": GGUFValue(GGUFValueType.INT32, 32)}, {})
    with pytest.raises(FormatError, match="must be a uint32"):
        GGUFFile(corrupt(tmp_path, data))


def tensor_table(data, name):
    """Offset of tensor ``name``'s record (its name's length field) in the tensor table."""
    raw = name.encode()
    return data.index(struct.pack("<Q", len(raw)) + raw)


def test_misaligned_offset(tmp_path):
    data = bytearray(small_file())
    rec = tensor_table(data, "q") + 8 + 1 + 4 + 2 * 8 + 4  # -> offset field
    struct.pack_into("<Q", data, rec, struct.unpack_from("<Q", data, rec)[0] + 4)
    with pytest.raises(FormatError, match="not a multiple of the alignment"):
        GGUFFile(corrupt(tmp_path, data))


def test_overlapping_tensors(tmp_path):
    data = bytearray(small_file())
    rec = tensor_table(data, "q") + 8 + 1 + 4 + 2 * 8 + 4
    struct.pack_into("<Q", data, rec, 0)  # same place as "w"
    with pytest.raises(FormatError, match="'w' and 'q' overlap|'q' and 'w' overlap"):
        GGUFFile(corrupt(tmp_path, data))


def test_too_many_dims(tmp_path):
    data = bytearray(small_file())
    struct.pack_into("<I", data, tensor_table(data, "w") + 8 + 1, 5)
    with pytest.raises(FormatError, match="5 dimensions"):
        GGUFFile(corrupt(tmp_path, data))


def test_huge_dims(tmp_path):
    data = bytearray(small_file())
    struct.pack_into("<Q", data, tensor_table(data, "w") + 8 + 1 + 4, 2**62)
    with pytest.raises(FormatError, match="overflows int64"):
        GGUFFile(corrupt(tmp_path, data))


def test_block_size_mismatch(tmp_path):
    data = bytearray(small_file())
    struct.pack_into("<Q", data, tensor_table(data, "q") + 8 + 1 + 4, 16)  # ne0 16 for Q8_0
    with pytest.raises(FormatError, match="'q'.*not a multiple"):
        GGUFFile(corrupt(tmp_path, data))


def test_unknown_tensor_type(tmp_path):
    data = bytearray(small_file())
    struct.pack_into("<I", data, tensor_table(data, "w") + 8 + 1 + 4 + 2 * 8, 200)
    with pytest.raises(UnsupportedError, match="'w'.*type id 200"):
        GGUFFile(corrupt(tmp_path, data))


def test_duplicate_tensor(tmp_path):
    data = gguf_bytes({}, {"aa": (F32, (4,), bytes(16)), "ab": (F32, (4,), bytes(16))})
    data = data.replace(b"ab", b"aa")
    with pytest.raises(FormatError, match="'aa' appears twice"):
        GGUFFile(corrupt(tmp_path, data))


def test_missing_file(tmp_path):
    with pytest.raises(ModelNotFoundError):
        GGUFFile(tmp_path / "absent.gguf")


def test_errors_name_the_file(tmp_path):
    p = corrupt(tmp_path, b"XXXX" + bytes(40))
    with pytest.raises(FormatError, match=str(p)):
        GGUFFile(p)


# -- lifetime ---------------------------------------------------------------------------------
def test_close_and_closed_use(tmp_path):
    g = GGUFFile(write(tmp_path, small_file()))
    v = g.tensor_bytes("w")
    v.release()
    g.close()
    assert g.closed
    g.close()  # idempotent
    with pytest.raises(ClosedError):
        g.tensor_bytes("w")


def test_close_with_live_view_keeps_data_valid(tmp_path):
    g = GGUFFile(write(tmp_path, small_file()))
    v = g.tensor_bytes("w")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        g.close()
    assert any(issubclass(w.category, ResourceWarning) for w in caught)
    # The mapping outlives close() while the view exists: reading it must still work.
    assert struct.unpack("<6f", v)[5] == 5.0
    v.release()
    gc.collect()


def test_missing_tensor_and_unsupported_names(tmp_path):
    with GGUFFile(write(tmp_path, small_file())) as g:
        with pytest.raises(FormatError, match="no tensor named 'nope'"):
            g.tensor_bytes("nope")
        with pytest.raises(FormatError, match="no tensor named"):
            g.check_supported("nope")
