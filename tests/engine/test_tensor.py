"""Tensor semantics through the Python backend: allocation, views that share memory, reshape,
indexing, wrapping foreign buffers, the buffer protocol, conversions, and typed errors."""
import sys
import struct

import pytest

from toolkit import errors
from toolkit.core.engine.backend import Tensor


def test_new_tensor_is_zero_filled_and_contiguous():
    t = Tensor((2, 3))
    assert t.shape == (2, 3) and t.dtype == "F32" and t.ndim == 2 and t.numel == 6
    assert t.to_list() == [0.0] * 6
    assert t.strides == (12, 4) and t.nbytes == 24 and t.is_contiguous()
    h = Tensor((4,), "f16")  # dtype names are case-insensitive
    assert h.dtype == "F16" and h.nbytes == 8
    q = Tensor((2, 64), "Q8_0")
    assert q.nbytes == 2 * 2 * 34 and q.strides == (68, 0)
    assert Tensor((0, 5)).numel == 0 and Tensor((0, 5)).to_list() == []


def test_from_list_infers_nested_shapes():
    t = Tensor.from_list([[1, 2, 3], [4, 5, 6]])
    assert t.shape == (2, 3) and t.to_list() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert t.tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    i = Tensor.from_list([7, -8], dtype="I32")
    assert i.to_list() == [7, -8] and isinstance(i.to_list()[0], int)
    assert Tensor.from_list([1.0] * 6, shape=(3, 2)).shape == (3, 2)
    with pytest.raises(errors.ShapeError):
        Tensor.from_list([[1, 2], [3]])
    with pytest.raises(errors.ShapeError):
        Tensor((2, 2)).load([1.0, 2.0, 3.0])
    with pytest.raises(errors.ToolkitError):
        Tensor((2,)).load(["a", "b"])


def test_reshape_is_a_view_sharing_memory():
    t = Tensor.from_list(list(range(12)), (3, 4))
    r = t.reshape(2, -1)
    assert r.shape == (2, 6) and r.data_ptr() == t.data_ptr()
    r.memoryview()[1, 0] = 100.0  # element 6
    assert t.to_list()[6] == 100.0
    assert t.reshape((12,)).shape == (12,) and t.view(4, 3).shape == (4, 3)
    with pytest.raises(errors.ShapeError):
        t.reshape(5, -1)
    with pytest.raises(errors.ShapeError):
        t.reshape(-1, -1)
    with pytest.raises(errors.ShapeError):
        t.reshape(13)


def test_indexing_and_slicing_along_dim0_are_views():
    t = Tensor.from_list(list(range(24)), (2, 3, 4))
    row = t[1]
    assert row.shape == (3, 4) and row.to_list() == [float(v) for v in range(12, 24)]
    assert t[-1].to_list() == row.to_list()
    s = t[0:1]
    assert s.shape == (1, 3, 4)
    s.memoryview()[0, 0, 0] = -5.0
    assert t.to_list()[0] == -5.0
    assert t[1][2].to_list() == [20.0, 21.0, 22.0, 23.0]
    assert Tensor.from_list([3.0, 4.0])[1] == 4.0  # 1-D indexing gives a number
    assert t[2:2].shape == (0, 3, 4)
    with pytest.raises(errors.IndexOutOfRangeError):
        t[2]
    assert t[0:2:2].shape == (1, 3, 4)  # positive steps are strided views
    with pytest.raises(errors.InvalidArgumentError, match="positive step"):
        t[::-1]
    with pytest.raises(errors.ArgumentTypeError):
        t["a"]


def test_strided_views_copy_and_bounds():
    t = Tensor.from_list(list(range(12)), (3, 4))
    col = t._view((3, 2), (16, 4), 8)  # columns 2..3
    assert not col.is_contiguous()
    assert col.contiguous().to_list() == [2.0, 3.0, 6.0, 7.0, 10.0, 11.0]
    assert col.to_list() == [2.0, 3.0, 6.0, 7.0, 10.0, 11.0]
    with pytest.raises(errors.ShapeError):
        col.reshape(6)  # not contiguous
    with pytest.raises(errors.ShapeError):
        t._view((3, 4), (16, 4), 4)  # one element past the end
    with pytest.raises(errors.ShapeError):
        t._view((4, 4), None, 0)


def test_wrap_borrows_a_buffer_without_copying():
    buf = bytearray(struct.pack("4f", 1.0, 2.0, 3.0, 4.0))
    t = Tensor.wrap(buf, (2, 2))
    assert t.to_list() == [1.0, 2.0, 3.0, 4.0]
    buf[0:4] = struct.pack("f", 9.0)
    assert t.to_list()[0] == 9.0
    t.memoryview()[1, 1] = 7.0
    assert struct.unpack("4f", bytes(buf))[3] == 7.0
    w = Tensor.wrap(buf, (2,), offset=8)
    assert w.to_list() == [3.0, 7.0]
    with pytest.raises(errors.ShapeError):
        Tensor.wrap(buf, (5,))
    with pytest.raises(errors.ShapeError):
        Tensor.wrap(buf, (2,), offset=12)


def test_conversions_and_clone_are_copies():
    t = Tensor.from_list([1.5, -2.25, 3.0])
    c = t.clone()
    c.memoryview()[0] = 0.0
    assert t.to_list()[0] == 1.5
    assert t.to("F32") is t
    h = t.to("F16")
    assert h.dtype == "F16" and h.to_list() == [1.5, -2.25, 3.0]
    assert t.to("BF16").to_list() == [1.5, -2.25, 3.0]
    assert t.to("I32").to_list() == [1, -2, 3]
    d = Tensor((3,), "F16")
    assert d.copy_(t) is d and d.to_list() == [1.5, -2.25, 3.0]
    ai = t.__array_interface__
    assert ai["shape"] == (3,) and ai["typestr"] == "<f4" and ai["data"][0] == t.data_ptr()


def test_bad_construction_raises_typed_errors():
    with pytest.raises(errors.DTypeError):
        Tensor((2,), "F64")
    with pytest.raises(errors.ShapeError):
        Tensor((2, -1))
    with pytest.raises(errors.ShapeError):
        Tensor((1, 1, 1, 1, 1))
    with pytest.raises(errors.ShapeError):
        Tensor(())
    with pytest.raises(errors.ShapeError):
        Tensor((2, 33), "Q4_0")  # block rows are whole 32-element blocks
    with pytest.raises(errors.ToolkitError):
        Tensor((2.5,))
    with pytest.raises(errors.ToolkitError):
        Tensor("abc")
    with pytest.raises(errors.ShapeError):
        Tensor((2, 3)).item()
    assert Tensor.from_list([4.0]).item() == 4.0


def test_f16_and_bf16_memoryview():
    # F16 exposes struct format "e" where memoryview can cast to it (3.12+), else raw uint16 bits;
    # BF16 is always raw uint16 "H" (no struct code exists for bfloat16)
    h = Tensor.from_list([1.5, -2.0], dtype="F16")
    mv = h.memoryview()
    if sys.version_info >= (3, 12):
        assert mv.format == "e" and mv.tolist() == [1.5, -2.0]
    else:
        assert mv.format == "H" and mv.tolist() == [0x3E00, 0xC000]
    b = Tensor.from_list([1.0], dtype="BF16")
    assert b.memoryview().tolist() == [0x3F80]


def test_tensor_copy_needs_the_same_shape():
    """t.copy_(src) between different shapes of one size used to copy in element order: a [pos, head]
    source into a [head, pos] view scrambled a hook's tensor silently. It needs the same shape now;
    functional.copy_ keeps the element-order copy for whoever means it."""
    from toolkit import errors
    from toolkit.core.engine import functional as F

    src = Tensor.from_list([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    dst = Tensor((3, 2))
    with pytest.raises(errors.ShapeError, match=r"copy_\(\): source shape \(2, 3\) differs"):
        dst.copy_(src)
    assert dst.to_list() == [0.0] * 6
    assert dst.copy_(src.transpose(0, 1)).tolist() == [[1.0, 4.0], [2.0, 5.0], [3.0, 6.0]]
    assert F.copy_(dst, src).to_list() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert Tensor((2, 3), "F16").copy_(src).to_list() == src.to_list()  # dtypes still convert


def _nested(shape, base=0):
    """Nested lists of distinct numbers in `shape`, the reference for indexing."""
    if not shape:
        return float(base)
    step = 1
    for d in shape[1:]:
        step *= d
    return [_nested(shape[1:], base + i * step) for i in range(shape[0])]


def _ref(x, idx):
    """Basic indexing on nested lists (ints, slices, ...), as NumPy does it."""
    idx = idx if isinstance(idx, tuple) else (idx,)
    if Ellipsis in idx:
        depth, y = 0, x
        while isinstance(y, list):
            depth, y = depth + 1, y[0] if y else None
        e = idx.index(Ellipsis)
        idx = idx[:e] + (slice(None),) * (depth - len(idx) + 1) + idx[e + 1:]
    if not idx:
        return x
    i, rest = idx[0], idx[1:]
    if isinstance(i, slice):
        return [_ref(y, rest) for y in x[i]]
    return _ref(x[i], rest)


@pytest.mark.parametrize("idx", [
    (1, 2), (1, 2, 3), (slice(None), 2), (slice(None), slice(1, 3), 0), (Ellipsis, 1), (0, Ellipsis),
    (slice(None, None, 2), slice(None), slice(1, None, 2)), (-1, -2, -3), (slice(5, 1),), (Ellipsis,),
    (1, Ellipsis, slice(0, 4, 3)),
])
def test_multi_dim_indexing_matches_numpy_basic_indexing(idx):
    shape = (3, 4, 5)
    t = Tensor.from_list(_nested(shape), shape)
    got = t[idx]
    want = _ref(_nested(shape), idx)
    assert (got.tolist() if isinstance(got, Tensor) else got) == want


def test_item_assignment_writes_through_views():
    """t[:, h] = 0 is what a TransformerLens user writes in a hook to ablate head h of hook_z."""
    shape = (3, 4, 5)
    t = Tensor.from_list(_nested(shape), shape)
    ref = _nested(shape)
    t[:, 2] = 0
    for p in range(3):
        ref[p][2] = [0.0] * 5
    assert t.tolist() == ref
    t[1, 1:3, ::2] = -1.5
    for h in (1, 2):
        for d in (0, 2, 4):
            ref[1][h][d] = -1.5
    assert t.tolist() == ref
    t[0, 0, 0] = 7
    ref[0][0][0] = 7.0
    src = Tensor.from_list([[9.0] * 5] * 4)
    t[2] = src
    ref[2] = [[9.0] * 5] * 4
    assert t.tolist() == ref
    t[..., 4] = Tensor((3, 4), "F16")  # any dtype converts
    for p in range(3):
        for h in range(4):
            ref[p][h][4] = 0.0
    assert t.tolist() == ref
    ids = Tensor.from_list([1, 2, 3], dtype="I32")
    ids[1] = 40
    assert ids.to_list() == [1, 40, 3]
    ids[0:2] = (7, 8)
    assert ids.to_list() == [7, 8, 3]
    t[0, :, 0] = [1.0, 2.0, 3.0, 4.0]  # nested lists (and NumPy arrays, through their tolist())
    t[1, 0:2, 0:2] = [[5.0, 6.0], [7.0, 8.0]]
    for h in range(4):
        ref[0][h][0] = float(h + 1)
    ref[1][0][0:2], ref[1][1][0:2] = [5.0, 6.0], [7.0, 8.0]
    assert t.tolist() == ref


def test_item_assignment_refuses_bad_values_and_changes_nothing():
    t = Tensor.from_list(_nested((2, 3)), (2, 3))
    before = t.tolist()
    with pytest.raises(errors.ShapeError, match="shape"):
        t[0] = Tensor((2,))
    with pytest.raises(errors.ArgumentTypeError):
        t[0] = "zero"
    with pytest.raises(errors.ShapeError, match="shape"):
        t[0] = [1.0, 2.0]
    with pytest.raises(errors.ShapeError):
        t[:, 0:2] = [[1.0, 2.0], [3.0]]  # ragged
    with pytest.raises(errors.ArgumentTypeError):
        t[0] = ["a", "b", "c"]
    with pytest.raises(errors.IndexOutOfRangeError):
        t[0, 3] = 1.0
    with pytest.raises(errors.IndexOutOfRangeError):
        t[0, 0, 0] = 1.0
    with pytest.raises(errors.ArgumentTypeError):
        t[0, 1.0] = 1.0
    with pytest.raises(errors.InvalidArgumentError, match="read-only"):
        Tensor.wrap(struct.pack("6f", *range(6)), (2, 3))[0, 1] = 5.0
    assert t.tolist() == before


def test_item_assignment_takes_array_likes_through_tolist():
    """A NumPy array (or scalar) is taken through its tolist(), without this package importing NumPy."""
    class ArrayLike:
        def __init__(self, v):
            self.v = v

        def tolist(self):
            return self.v

    t = Tensor((2, 3))
    t[1] = ArrayLike([1.0, 2.0, 3.0])
    t[0, 2] = ArrayLike(5.0)
    assert t.tolist() == [[0.0, 0.0, 5.0], [1.0, 2.0, 3.0]]
