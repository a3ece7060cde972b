"""safetensors reader/writer: interop with the reference package both ways, and damaged files."""

import array
import json
import struct

import cffi
import pytest
import safetensors

from toolkit.common.loaders.safetensors_io import (
    SafetensorsFile,
    open_safetensors_dir,
    save_safetensors,
)
from toolkit.errors import (
    ArgumentTypeError,
    ClosedError,
    FormatError,
    ModelNotFoundError,
    ShapeError,
)

ffi = cffi.FFI()


def sample():
    return {
        "embed": ("F32", (2, 3), array.array("f", [1, 2, 3, 4, 5, 6])),
        "norm": ("BF16", (4,), bytes([0, 0x3F, 0, 0x40, 0x80, 0x3F, 0, 0])),
        "ids": ("I64", (3,), array.array("q", [7, -8, 9])),
        "mask": ("U8", (5,), b"\x01\x00\x01\x01\x00"),
        "empty": ("F16", (0, 4), b""),
    }


def test_roundtrip_and_reference_reader(tmp_path):
    p = tmp_path / "m.safetensors"
    save_safetensors(p, sample(), metadata={"format": "pt", "note": "ü"})
    raw = p.read_bytes()
    (n,) = struct.unpack_from("<Q", raw)
    assert n % 8 == 0 and raw[8 + n - 1 : 8 + n] in (b" ", b"}")

    ref = dict(safetensors.deserialize(raw))
    assert ref["embed"]["dtype"] == "F32" and ref["embed"]["shape"] == [2, 3]
    assert bytes(ref["embed"]["data"]) == array.array("f", [1, 2, 3, 4, 5, 6]).tobytes()
    assert bytes(ref["ids"]["data"]) == array.array("q", [7, -8, 9]).tobytes()
    assert ref["norm"]["dtype"] == "BF16"

    with SafetensorsFile(p) as f:
        assert f.metadata == {"format": "pt", "note": "ü"}
        assert f.tensors["embed"].shape == (2, 3)
        assert f.tensors["empty"].nbytes == 0
        for name, (dtype, shape, data) in sample().items():
            info = f.tensors[name]
            assert (info.dtype, info.shape) == (dtype, shape)
            assert info.begin % (8 if dtype == "I64" else 4 if dtype == "F32" else 1) == 0
            v = f.tensor_bytes(name)
            assert v.readonly and v.tobytes() == bytes(memoryview(data).cast("B"))
            v.release()


def test_reads_files_written_by_reference(tmp_path):
    buffers = {
        "a": ("float32", [2, 2], array.array("f", [0.5, 1.5, -2.0, 3.0])),
        "b": ("bfloat16", [3], bytes([1, 2, 3, 4, 5, 6])),
        "c": ("int32", [1, 2], array.array("i", [-1, 2**31 - 1])),
    }
    keep = []  # the cffi pointers must outlive serialize_file
    specs = {}
    for name, (dtype, shape, buf) in buffers.items():
        ptr = ffi.from_buffer(buf)
        keep.append(ptr)
        specs[name] = safetensors.TensorSpec(
            dtype=dtype, shape=shape, data_ptr=int(ffi.cast("uintptr_t", ptr)), data_len=len(ptr)
        )
    p = tmp_path / "ref.safetensors"
    safetensors.serialize_file(specs, str(p), metadata={"k": "v"})
    with SafetensorsFile(p) as f:
        assert f.metadata == {"k": "v"}
        assert {n: (i.dtype, i.shape) for n, i in f.tensors.items()} == {
            "a": ("F32", (2, 2)), "b": ("BF16", (3,)), "c": ("I32", (1, 2))}
        for name, (_, _, buf) in buffers.items():
            v = f.tensor_bytes(name)
            assert v.tobytes() == bytes(memoryview(buf).cast("B"))
            v.release()


def test_tensor_bytes_is_zero_copy(tmp_path):
    p = tmp_path / "m.safetensors"
    save_safetensors(p, sample())
    with SafetensorsFile(p) as f:
        v = f.tensor_bytes("embed")
        ptr = ffi.from_buffer("float[]", v)
        whole = f._view  # the mapping itself
        base = ffi.from_buffer(whole)
        address = int(ffi.cast("uintptr_t", ptr)) - int(ffi.cast("uintptr_t", base))
        assert address == f.tensors["embed"].begin
        assert list(ptr) == [1, 2, 3, 4, 5, 6]
        ffi.release(ptr)
        ffi.release(base)
        v.release()
    assert f.closed
    with pytest.raises(ClosedError):
        f.tensor_bytes("embed")


def test_writer_rejects_bad_input_and_leaves_nothing(tmp_path):
    p = tmp_path / "m.safetensors"
    with pytest.raises(ShapeError, match="needs 24 bytes"):
        save_safetensors(p, {"x": ("F32", (2, 3), bytes(20))})
    with pytest.raises(ArgumentTypeError, match="unknown dtype"):
        save_safetensors(p, {"x": ("float32", (1,), bytes(4))})
    with pytest.raises(ArgumentTypeError):
        save_safetensors(p, {"x": ("F32", (1,), bytes(4))}, metadata={"k": 1})
    with pytest.raises(ArgumentTypeError):
        save_safetensors(p, {"__metadata__": ("F32", (1,), bytes(4))})
    assert list(tmp_path.iterdir()) == []


def test_writer_failure_keeps_old_file(tmp_path, monkeypatch):
    p = tmp_path / "m.safetensors"
    save_safetensors(p, sample())
    before = p.read_bytes()

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("toolkit.common.atomic.os.fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_safetensors(p, {"y": ("F32", (1,), bytes(4))})
    assert p.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == ["m.safetensors"]


# -- damaged files ------------------------------------------------------------------------------
def build(header, data=b"", pad=True):
    raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
    if pad:
        raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


@pytest.mark.parametrize(
    "blob, message",
    [
        (b"\x01\x02", "too short"),
        (struct.pack("<Q", 1000) + b"{}", "header length 1000 is impossible"),
        (struct.pack("<Q", 2**40) + b"{}" + bytes(100), "impossible"),
        (build(b"not json"), "not valid UTF-8 JSON"),
        (build(b"\xff\xfe{}"), "not valid UTF-8 JSON"),
        (build([1, 2]), "not an object"),
        (build({"__metadata__": {"a": 1}}), "__metadata__ must map strings to strings"),
        (build({"t": {"dtype": "F33", "shape": [1], "data_offsets": [0, 4]}}, bytes(4)),
         "tensor 't': unknown dtype 'F33'"),
        (build({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, bytes(4)),
         "'t': F32 \\(2,\\) needs 8 bytes but data_offsets span 4"),
        (build({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, bytes(2)),
         "'t': data_offsets \\[0, 4\\] lie outside the data area"),
        (build({"t": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, bytes(4)),
         "outside the data area"),
        (build({"t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, bytes(4)),
         "not a list of non-negative integers"),
        (build({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}, bytes(4)),
         "not \\[begin, end\\]"),
        (build({"t": [1]}), "entry is not a JSON object"),
        (build({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12)),
         "'a' and 'b' overlap"),
        (build(b'{"t": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, '
               b'"t": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}', bytes(2)),
         "duplicate key 't'"),
    ],
)
def test_corrupt_files(tmp_path, blob, message):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(blob)
    with pytest.raises(FormatError, match=message) as e:
        SafetensorsFile(p)
    assert str(p) in str(e.value)


def test_sub_byte_dtype(tmp_path):
    p = tmp_path / "f4.safetensors"
    save_safetensors(p, {"q": ("F4", (2, 3), bytes(3))})
    with SafetensorsFile(p) as f:
        assert f.tensors["q"].nbytes == 3
    with pytest.raises(ShapeError):
        save_safetensors(p, {"q": ("F4", (3,), bytes(2))})  # 12 bits is not whole bytes


# -- directories --------------------------------------------------------------------------------
def test_single_file_dir(tmp_path):
    save_safetensors(tmp_path / "model.safetensors", sample())
    with open_safetensors_dir(tmp_path) as d:
        assert set(d) == set(sample())
        f, info = d["ids"]
        assert info.shape == (3,)
        assert d.tensor_bytes("ids").tobytes() == array.array("q", [7, -8, 9]).tobytes()
    assert all(f.closed for f in d.files)


def test_sharded_dir(tmp_path):
    items = list(sample().items())
    save_safetensors(tmp_path / "model-00001-of-00002.safetensors", dict(items[:2]))
    save_safetensors(tmp_path / "model-00002-of-00002.safetensors", dict(items[2:]))
    weight_map = {n: f"model-0000{1 if i < 2 else 2}-of-00002.safetensors"
                  for i, (n, _) in enumerate(items)}
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    with open_safetensors_dir(tmp_path) as d:
        assert len(d) == len(items) and len(d.files) == 2
        assert d["mask"][1].dtype == "U8"
        assert d["embed"][0] is not d["mask"][0]


def test_sharded_dir_errors(tmp_path):
    save_safetensors(tmp_path / "s1.safetensors", {"a": ("U8", (1,), b"x")})
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "s1.safetensors", "b": "s1.safetensors"}}))
    with pytest.raises(FormatError, match="'b' is not in shard s1.safetensors"):
        open_safetensors_dir(tmp_path)
    index.write_text(json.dumps({"weight_map": {"a": "../s1.safetensors"}}))
    with pytest.raises(FormatError, match="not a file name"):
        open_safetensors_dir(tmp_path)
    index.write_text("{nope")
    with pytest.raises(FormatError, match="not a safetensors index"):
        open_safetensors_dir(tmp_path)


def test_missing_dir(tmp_path):
    with pytest.raises(ModelNotFoundError):
        open_safetensors_dir(tmp_path)


def test_missing_files(tmp_path):
    with pytest.raises(ModelNotFoundError):
        SafetensorsFile(tmp_path / "nope.safetensors")
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(FormatError, match="is missing"):
        open_safetensors_dir(tmp_path)


def test_unknown_name_in_dir(tmp_path):
    save_safetensors(tmp_path / "model.safetensors", sample())
    with open_safetensors_dir(tmp_path) as d:
        assert "nope" not in d
        with pytest.raises(FormatError, match="no tensor named 'nope'"):
            d.tensor_bytes("nope")
