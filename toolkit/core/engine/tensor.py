"""`Tensor`: a Python handle on an engine `ce_tensor` (owned memory, borrowed memory, or a view).

It holds no numbers itself: the data lives in C memory (or in a caller's buffer such as an mmap of a
weight file, never copied). It speaks the buffer protocol (`memoryview(t)` on Python 3.12+,
`t.memoryview()` everywhere) and NumPy's `__array_interface__`, so a user's own NumPy can wrap it
without a copy; this package never imports NumPy. Elementwise work never happens in Python here:
`load`/`to_list` move whole buffers through the engine's converters.
"""
import numbers
import operator
from array import array

from toolkit import errors

from . import dtypes as _dt
from ._lib import check, ffi, lib

_MAX_DIMS = 4


def validate_index(i):
    """An int index (NumPy's integers too; not bools, floats or strings)."""
    if isinstance(i, bool):
        raise errors.ArgumentTypeError(f"tensors index with ints, slices and ..., got {i!r}")
    try:
        return operator.index(i)
    except TypeError:
        raise errors.ArgumentTypeError(f"tensors index with ints, slices and ..., got {type(i).__name__}") from None


def _normalize_shape(shape):
    if isinstance(shape, int):
        shape = (shape,)
    if not isinstance(shape, (list, tuple)):
        raise errors.ArgumentTypeError(f"shape must be a list or tuple of ints, got {type(shape).__name__}")
    if not 1 <= len(shape) <= _MAX_DIMS:
        raise errors.ShapeError(f"tensors have 1 to {_MAX_DIMS} dims, got shape {tuple(shape)}")
    out = []
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, int):
            raise errors.ArgumentTypeError(f"shape entries must be ints, got {d!r} in {tuple(shape)}")
        if d < 0:
            raise errors.ShapeError(f"negative dimension in shape {tuple(shape)}")
        out.append(d)
    return tuple(out)


def _flatten(values):
    """Flattens nested lists/tuples; returns (flat list, inferred shape)."""
    if not isinstance(values, (list, tuple)):
        raise errors.ArgumentTypeError(f"expected a list of numbers, got {type(values).__name__}")
    shape = [len(values)]
    flat = values
    while flat and isinstance(flat[0], (list, tuple)):
        inner = len(flat[0])
        nxt = []
        for row in flat:
            if not isinstance(row, (list, tuple)) or len(row) != inner:
                raise errors.ShapeError("ragged nested list: every row must have the same length")
            nxt.extend(row)
        shape.append(inner)
        flat = nxt
    return list(flat), tuple(shape)


def _base_buffer(buffer, ptr):
    """(what keeps the memory alive, its address) for Tensor.wrap: for a memoryview (a slice of a
    mapped file, as the loaders hand out) the exporter under it, not the view. A memoryview that
    lends its buffer to a cffi pointer must never meet the cycle collector: CPython 3.11's
    memoryview tp_clear drops its managed buffer while the pointer still holds an export, and the
    pointer's own clear then dereferences it (a SIGSEGV when a model held in a reference cycle was
    collected)."""
    base = buffer.obj if isinstance(buffer, memoryview) else None
    if base is None or isinstance(base, memoryview) or not buffer.c_contiguous:
        return ptr, ptr
    try:
        bptr = ffi.from_buffer(base)
    except TypeError:  # an exporter that is no buffer object itself
        return ptr, ptr
    off = int(ffi.cast("uintptr_t", ptr)) - int(ffi.cast("uintptr_t", bptr))
    if not 0 <= off <= len(bptr) - len(ptr):
        ffi.release(bptr)
        return ptr, ptr
    ffi.release(ptr)  # the view's export, released now: only the exporter's stays
    return bptr, bptr + off


class Tensor:
    """An n-d array (1 to 4 dims) whose data the C engine owns or borrows.

    `Tensor([2, 3])` allocates zeros; `Tensor.from_list(...)` / `.load(...)` fill it;
    `Tensor.wrap(buffer, shape, dtype)` borrows memory (e.g. an mmap of a weight file).
    """

    __slots__ = ("_ct", "_owner", "shape", "dtype", "__weakref__")

    def __init__(self, shape, dtype="F32"):
        shape = _normalize_shape(shape)
        code = _dt.code(dtype)
        pp = ffi.new("ce_tensor **")
        check(lib.ce_tensor_new(pp, code, len(shape), shape))
        self._ct = ffi.gc(pp[0], lib.ce_tensor_free)
        self._owner = None
        self.shape = shape
        self.dtype = _dt.NAMES[code]

    @classmethod
    def _from_handle(cls, ct, shape, dtype, owner):
        t = cls.__new__(cls)
        t._ct = ffi.gc(ct, lib.ce_tensor_free)
        t._owner = owner
        t.shape = shape
        t.dtype = dtype
        return t

    # ---- construction ----
    @classmethod
    def from_list(cls, values, shape=None, dtype="F32"):
        """A new tensor holding `values` (flat or nested); block dtypes are quantised."""
        flat, inferred = _flatten(values)
        t = cls(shape if shape is not None else inferred, dtype)
        return t.load(flat)

    @classmethod
    def wrap(cls, buffer, shape, dtype="F32", offset=0):
        """A tensor over `buffer`'s memory (zero-copy); the buffer is kept alive by the tensor.

        The engine never writes to a wrapped tensor unless it is used as an op's output. A
        read-only buffer (bytes, a read-only mmap, a read-only memoryview) gives a read-only
        tensor (`read_only`): ops refuse it as an output, and load() and memoryview() refuse to
        write through it, where a store into the memory would end the process or change an
        immutable object.
        """
        shape = _normalize_shape(shape)
        code = _dt.code(dtype)
        name = _dt.NAMES[code]
        rows = 1
        for d in shape[:-1]:
            rows *= d
        need = rows * _dt.row_bytes(name, shape[-1])
        ptr = ffi.from_buffer(buffer)
        if offset < 0 or offset + need > len(ptr):
            raise errors.ShapeError(
                f"buffer of {len(ptr)} bytes is too small for a {name} tensor of shape {shape} "
                f"at offset {offset} ({need} bytes needed)")
        with memoryview(buffer) as mv:
            read_only = mv.readonly
        owner, data = _base_buffer(buffer, ptr)
        pp = ffi.new("ce_tensor **")
        check(lib.ce_tensor_wrap(pp, code, len(shape), shape, data + offset))
        if read_only:
            pp[0].flags |= lib.CE_TENSOR_READ_ONLY
        return cls._from_handle(pp[0], shape, name, owner)

    # ---- facts ----
    @property
    def ptr(self):
        """The `ce_tensor *` handle, for engine calls."""
        return self._ct

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def numel(self):
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self):
        return lib.ce_tensor_nbytes(self._ct)

    @property
    def strides(self):
        """Byte strides per dim (0 on the last dim of block dtypes)."""
        return tuple(self._ct.stride[i] for i in range(len(self.shape)))

    @property
    def read_only(self):
        """True for a tensor over memory that may not be written (Tensor.wrap of a read-only buffer,
        and views of it): ops refuse it as an output."""
        return bool(self._ct.flags & lib.CE_TENSOR_READ_ONLY)

    def _writable(self, what):
        if self._ct.flags & lib.CE_TENSOR_READ_ONLY:
            raise errors.InvalidArgumentError(
                f"{what}: this tensor wraps read-only memory (a read-only buffer or mapping); write to a copy "
                f"(t.clone())")

    def is_contiguous(self):
        return bool(lib.ce_tensor_is_contiguous(self._ct))

    def data_ptr(self):
        return int(ffi.cast("uintptr_t", self._ct.data))

    def __len__(self):
        return self.shape[0]

    # ---- data in and out ----
    def load(self, values):
        """Fills this (contiguous) tensor from a flat sequence of numbers; returns self."""
        if not self.is_contiguous():
            raise errors.ShapeError("load() needs a contiguous tensor; call .contiguous() first")
        self._writable("load()")
        if isinstance(values, (list, tuple)) and values and isinstance(values[0], (list, tuple)):
            values, _ = _flatten(values)
        n = self.numel
        if len(values) != n:
            raise errors.ShapeError(f"load() got {len(values)} values for a tensor of {n} elements {self.shape}")
        try:
            if self.dtype == "I32":
                buf = array("i", values)
                src_code = lib.CE_I32
            else:
                buf = array("f", values)
                src_code = lib.CE_F32
        except (TypeError, OverflowError) as exc:
            raise errors.ArgumentTypeError(f"load() needs numbers for a {self.dtype} tensor: {exc}") from exc
        if n:
            check(lib.ce_convert(self._ct.dtype, self._ct.data, src_code, ffi.from_buffer(buf), n))
        return self

    def to_list(self):
        """All elements as a flat Python list (floats; ints for I32). Block dtypes are dequantised."""
        t = self if self.is_contiguous() else self.contiguous()
        n = t.numel
        if t.dtype == "I32":
            out = array("i", bytes(4 * n))
            dst = lib.CE_I32
        else:
            out = array("f", bytes(4 * n))
            dst = lib.CE_F32
        if n:
            check(lib.ce_convert(dst, ffi.from_buffer(out), t._ct.dtype, t._ct.data, n))
        return out.tolist()

    def tolist(self):
        """Nested lists in this tensor's shape (like NumPy's tolist)."""
        flat = self.to_list()
        for d in reversed(self.shape[1:]):
            flat = [flat[i:i + d] for i in range(0, len(flat), d)] if d else [[] for _ in range(len(flat))]
        return flat

    def item(self):
        if self.numel != 1:
            raise errors.ShapeError(f"item() needs a tensor with one element, got shape {self.shape}")
        return self.to_list()[0]

    def memoryview(self):
        """A zero-copy memoryview of a contiguous tensor (raw bytes for block dtypes); writable unless
        the tensor is `read_only`."""
        if not self.is_contiguous():
            raise errors.ShapeError("memoryview() needs a contiguous tensor; call .contiguous() first")
        # The memoryview must keep this tensor (and so its memory) alive: a pointer whose gc
        # "destructor" closes over self does that for as long as the buffer exists.
        keep = ffi.gc(ffi.cast("char *", self._ct.data), lambda _p, _owner=self: None)
        raw = memoryview(ffi.buffer(keep, self.nbytes))
        if self._ct.flags & lib.CE_TENSOR_READ_ONLY:
            raw = raw.toreadonly()
        fmt = _dt.FORMATS.get(self.dtype)
        if fmt is None:
            return raw
        return raw.cast(fmt, self.shape) if self.numel else raw.cast(fmt)

    def __buffer__(self, flags):  # Python 3.12+ buffer protocol (PEP 688)
        return self.memoryview()

    @property
    def __array_interface__(self):
        """NumPy's array interface: np.asarray(t) wraps this memory without a copy."""
        if self.dtype in _dt.BLOCK_DTYPES:
            rows = self.numel // self.shape[-1]
            shape = (rows, self.nbytes // max(rows, 1))
            return {"shape": shape, "typestr": "|u1", "data": (self.data_ptr(), self.read_only), "version": 3}
        return {"shape": self.shape, "typestr": _dt.TYPESTR[self.dtype], "data": (self.data_ptr(), self.read_only),
                "strides": None if self.is_contiguous() else self.strides, "version": 3}

    # ---- views and conversions ----
    def _view(self, shape, strides, offset):
        pp = ffi.new("ce_tensor **")
        check(lib.ce_tensor_view(pp, self._ct, len(shape), shape, strides if strides is not None else ffi.NULL,
                                 offset))
        return Tensor._from_handle(pp[0], tuple(shape), self.dtype, self)

    def reshape(self, *shape):
        """A view with a new shape (same numel); needs a contiguous tensor. One dim may be -1."""
        if len(shape) == 1 and isinstance(shape[0], (list, tuple)):
            shape = tuple(shape[0])
        shape = list(shape)
        if shape.count(-1) > 1:
            raise errors.ShapeError("reshape() allows at most one -1")
        if -1 in shape:
            known = 1
            for d in shape:
                if d != -1:
                    known *= d
            if known == 0 or self.numel % known:
                raise errors.ShapeError(f"cannot reshape {self.shape} into {tuple(shape)}")
            shape[shape.index(-1)] = self.numel // known
        shape = _normalize_shape(shape)
        n = 1
        for d in shape:
            n *= d
        if n != self.numel:
            raise errors.ShapeError(f"cannot reshape {self.shape} ({self.numel} elements) into {shape}")
        if not self.is_contiguous():
            raise errors.ShapeError("reshape() needs a contiguous tensor; call .contiguous() first")
        if self.dtype in _dt.BLOCK_DTYPES and shape[-1] % 32:
            raise errors.ShapeError(f"{self.dtype} tensors keep a last dim that is a multiple of 32")
        return self._view(shape, None, 0)

    view = reshape

    def _index(self, idx):
        """(shape, strides, byte offset, scalar) of the view t[idx]: per dim an int (drops the dim)
        or a slice with a positive step (keeps it); `...` stands for the dims not named."""
        idx = idx if isinstance(idx, tuple) else (idx,)
        if sum(i is Ellipsis for i in idx) > 1:
            raise errors.InvalidArgumentError("an index may hold at most one ...")
        if Ellipsis in idx:
            e = idx.index(Ellipsis)
            idx = idx[:e] + (slice(None),) * (len(self.shape) - len(idx) + 1) + idx[e + 1:]
        if len(idx) > len(self.shape):
            raise errors.IndexOutOfRangeError(f"{len(idx)} indices for a tensor of {len(self.shape)} dims {self.shape}")
        if self.dtype in _dt.BLOCK_DTYPES and len(idx) == len(self.shape) and idx[-1] != slice(None):
            raise errors.UnsupportedError(f"{self.dtype} rows are indexed whole (their blocks pack 32 values)")
        shape, strides, offset = [], [], 0
        for d, i in enumerate(idx):
            n, st = self.shape[d], self._ct.stride[d]
            if isinstance(i, slice):
                start, stop, step = i.indices(n)
                if step < 1:
                    raise errors.InvalidArgumentError(f"tensor slices need a positive step, got {i.step}")
                length = len(range(start, stop, step))
                shape.append(length)
                strides.append(st * step)
                offset += start * st if length else 0
                continue
            k = validate_index(i)
            j = k + n if k < 0 else k
            if not 0 <= j < n:
                raise errors.IndexOutOfRangeError(f"index {k} out of range for dim {d} of size {n}")
            offset += j * st
        shape += self.shape[len(idx):]
        strides += self.strides[len(idx):]
        return shape, strides, offset, not shape

    def __getitem__(self, idx):
        """Views, as NumPy's basic indexing: per dim an int (drops the dim) or a slice with a
        positive step (keeps it), `...` for the dims not named; t[i, j] of every dim is a number."""
        shape, strides, offset, scalar = self._index(idx)
        if scalar:
            return self._view((1,), None, offset).to_list()[0]
        return self._view(shape, strides, offset)

    def __setitem__(self, idx, value):
        """t[idx] = number, or = a Tensor, nested lists or a NumPy array of the selected shape (any
        dtype): writes into this tensor's memory, e.g. `z[:, head] = 0` in a hook."""
        shape, strides, offset, _ = self._index(idx)
        view = self._view(shape or (1,), strides or None, offset)
        if not isinstance(value, Tensor) and callable(getattr(value, "tolist", None)):
            value = value.tolist()  # a NumPy array or scalar (this package never imports NumPy)
        if isinstance(value, (list, tuple)):
            flat, got = _flatten(value)
            if got != tuple(shape) and not (not shape and len(flat) == 1):
                raise errors.ShapeError(f"cannot assign values of shape {got} to t[{idx!r}] of shape {tuple(shape)}")
            value = Tensor(view.shape, "I32" if self.dtype == "I32" else "F32").load(flat)
        if isinstance(value, Tensor):
            if value.shape != view.shape and not (not shape and value.numel == 1):
                raise errors.ShapeError(f"cannot assign a tensor of shape {value.shape} to t[{idx!r}] of shape "
                                        f"{tuple(shape)}")
            check(lib.ce_copy(view._ct, value._ct))
            return
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise errors.ArgumentTypeError(f"t[...] = takes a number or a Tensor, got {type(value).__name__}")
        src = Tensor(view.shape, "I32" if self.dtype == "I32" else "F32")  # zero-filled
        if value != 0:  # repeated by array's C loop, converted by the engine
            try:
                fill = array("i" if src.dtype == "I32" else "f", [value]) * src.numel
            except (TypeError, OverflowError) as exc:
                raise errors.ArgumentTypeError(f"cannot store {value!r} in a {src.dtype} tensor: {exc}") from exc
            check(lib.ce_convert(src._ct.dtype, src._ct.data, lib.CE_I32 if src.dtype == "I32" else lib.CE_F32,
                                 ffi.from_buffer(fill), src.numel))
        check(lib.ce_copy(view._ct, src._ct))

    def permute(self, *dims):
        """A view with its dims reordered (like torch.permute); the data is not moved."""
        if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
            dims = tuple(dims[0])
        if sorted(dims) != list(range(self.ndim)):
            raise errors.ShapeError(f"permute() needs a reordering of 0..{self.ndim - 1}, got {dims}")
        if self.dtype in _dt.BLOCK_DTYPES and dims[-1] != self.ndim - 1:
            raise errors.ShapeError(f"{self.dtype} tensors must keep their last dim in place")
        strides = self.strides
        return self._view(tuple(self.shape[d] for d in dims), tuple(strides[d] for d in dims), 0)

    def transpose(self, a, b):
        dims = list(range(self.ndim))
        dims[a], dims[b] = dims[b], dims[a]
        return self.permute(dims)

    def contiguous(self):
        if self.is_contiguous():
            return self
        out = Tensor(self.shape, self.dtype)
        check(lib.ce_copy(out._ct, self._ct))
        return out

    def to(self, dtype):
        """A converted copy (quantise, dequantise or cast); self if already that dtype."""
        name = _dt.NAMES[_dt.code(dtype)]
        if name == self.dtype:
            return self
        out = Tensor(self.shape, name)
        check(lib.ce_copy(out._ct, self._ct))
        return out

    def clone(self):
        # Hooks clone every activation they see: skip the shape checks a new Tensor() does
        pp = ffi.new("ce_tensor **")
        check(lib.ce_tensor_new(pp, self._ct.dtype, len(self.shape), self.shape))
        out = Tensor._from_handle(pp[0], self.shape, self.dtype, None)
        check(lib.ce_copy(out._ct, self._ct))
        return out

    def copy_(self, src):
        """Copies src into self (the same shape; converts dtype); returns self. An element-order
        copy between shapes of the same size is functional.copy_ (or reshape src first)."""
        if not isinstance(src, Tensor):
            raise errors.ArgumentTypeError(f"copy_() needs a Tensor, got {type(src).__name__}")
        if src.shape != self.shape:
            # the engine copies any same-size pair in element order: a [pos, head] source into a
            # [head, pos] view would scramble it silently
            raise errors.ShapeError(f"copy_(): source shape {src.shape} differs from this tensor's {self.shape}; "
                                    f"reshape or permute it to match (functional.copy_ copies in element order)")
        check(lib.ce_copy(self._ct, src._ct))
        return self

    def __repr__(self):
        head = f"Tensor(shape={self.shape}, dtype={self.dtype}"
        if self.dtype in _dt.BLOCK_DTYPES or self.numel == 0:
            return head + ")"
        n = min(self.numel, 6)
        vals = self.reshape(-1)[:n].to_list() if self.is_contiguous() else self.contiguous().reshape(-1)[:n].to_list()
        body = ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in vals)
        return f"{head}, [{body}{', ...' if self.numel > n else ''}])"
