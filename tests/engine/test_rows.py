"""copy_rows_: writing rows into a tensor at an offset (how KV caches are appended to)."""
import pytest

from toolkit import errors
from toolkit.core.engine import functional as F
from toolkit.core.engine.backend import Tensor


def test_copy_rows_writes_at_offset_and_leaves_the_rest():
    dst = Tensor((5, 2, 3))
    src = Tensor.from_list([[[1, 2, 3], [4, 5, 6]], [[7, 8, 9], [10, 11, 12]]])
    F.copy_rows_(dst, 2, src)
    rows = dst.tolist()
    assert rows[0] == rows[1] == rows[4] == [[0.0] * 3] * 2
    assert rows[2] == [[1, 2, 3], [4, 5, 6]] and rows[3] == [[7, 8, 9], [10, 11, 12]]


def test_copy_rows_converts_to_f16():
    dst = Tensor((3, 4), "F16")
    F.copy_rows_(dst, 1, Tensor.from_list([[0.5, -1.0, 2.0, 3.0]]))
    assert dst.to("F32").tolist()[1] == [0.5, -1.0, 2.0, 3.0]


def test_copy_rows_from_a_strided_row_view():
    src = Tensor.from_list([[1, 2], [3, 4], [5, 6]])
    dst = Tensor((4, 2))
    F.copy_rows_(dst, 0, src[1:3])
    assert dst.tolist()[:2] == [[3, 4], [5, 6]]


@pytest.mark.parametrize("row0, src_shape, exc", [
    (4, (2, 3), errors.IndexOutOfRangeError),
    (-1, (1, 3), errors.IndexOutOfRangeError),
    (0, (1, 4), errors.ShapeError),
])
def test_copy_rows_bad_arguments(row0, src_shape, exc):
    with pytest.raises(exc):
        F.copy_rows_(Tensor((5, 3)), row0, Tensor(src_shape))


def test_copy_rows_rejects_other_dtypes_and_types():
    with pytest.raises(errors.DTypeError):
        F.copy_rows_(Tensor((2, 32), "Q8_0"), 0, Tensor((1, 32)))
    with pytest.raises(errors.ArgumentTypeError):
        F.copy_rows_([1, 2], 0, Tensor((1, 3)))


def test_copy_rows_into_a_permuted_head_major_cache():
    store = Tensor((2, 4, 3))                     # [heads, positions, dim]
    cache = store.permute(1, 0, 2)                # [positions, heads, dim] view
    assert cache.shape == (4, 2, 3) and not cache.is_contiguous()
    F.copy_rows_(cache, 1, Tensor.from_list([[[1, 2, 3], [4, 5, 6]]]))
    assert store.tolist()[0][1] == [1, 2, 3] and store.tolist()[1][1] == [4, 5, 6]
    assert store.tolist()[0][0] == [0, 0, 0]


def test_permute_and_transpose_are_views():
    t = Tensor.from_list([[1, 2, 3], [4, 5, 6]])
    tt = t.transpose(0, 1)
    assert tt.shape == (3, 2) and tt.contiguous().tolist() == [[1, 4], [2, 5], [3, 6]]
    with pytest.raises(errors.ShapeError):
        t.permute(0, 0)
    with pytest.raises(errors.ShapeError):
        Tensor((2, 32), "Q4_0").permute(1, 0)
