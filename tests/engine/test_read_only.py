"""Tensors over read-only memory: every op refuses them as outputs instead of faulting.

Tensor.wrap of a read-only buffer (bytes, a read-only mmap, a read-only memoryview) marks the
tensor CE_TENSOR_READ_ONLY; a store into such memory is a SIGSEGV that ends the interpreter (a
read-only mapping) or silently changes an immutable object (bytes). The engine checks the flag on
every output and in-place operand, so these calls raise and change nothing.
"""
import mmap
import os
import struct
import subprocess
import sys

import pytest

from toolkit import errors
from toolkit.core.engine import functional as F
from toolkit.core.engine._lib import ffi, lib
from toolkit.core.engine.tensor import Tensor


def _ro(shape, dtype="F32", fill=1.0):
    n = 1
    for d in shape:
        n *= d
    if dtype == "I32":
        return Tensor.wrap(struct.pack(f"{n}i", *([int(fill)] * n)), shape, "I32")
    return Tensor.wrap(struct.pack(f"{n}f", *([fill] * n)), shape, "F32")


def _ptrs(ts):
    return ffi.new("ce_tensor *[]", [t.ptr for t in ts])  # the caller keeps ts alive


def test_wrapping_read_only_memory_gives_a_read_only_tensor_and_its_views_stay_so():
    t = _ro((4, 8))
    assert t.read_only
    assert t[1].read_only and t.reshape(8, 4).read_only and t.transpose(0, 1).read_only
    assert not Tensor.wrap(bytearray(32 * 4), (4, 8)).read_only
    assert not Tensor((4, 8)).read_only
    assert not t.clone().read_only  # a copy is the way to write
    assert t.memoryview().readonly
    assert t.__array_interface__["data"][1] is True


def test_reading_a_read_only_tensor_works():
    w = _ro((3, 8), fill=0.5)
    x = Tensor.from_list([[1.0] * 8])
    assert F.matmul(x, w).to_list() == [4.0, 4.0, 4.0]
    assert F.add(w, w).to_list() == [1.0] * 24
    assert w.to_list() == [0.5] * 24


OUT_OPS = {
    "matmul": lambda o: F.matmul(Tensor.from_list([[1.0] * 8]), Tensor((4, 8)), out=o),
    "rms_norm": lambda o: F.rms_norm(Tensor((1, 4)), Tensor.from_list([1.0] * 4), out=o),
    "softmax": lambda o: F.softmax(Tensor((1, 4)), out=o),
    "silu": lambda o: F.silu(Tensor((1, 4)), out=o),
    "gelu": lambda o: F.gelu(Tensor((1, 4)), out=o),
    "silu_mul": lambda o: F.silu_mul(Tensor((1, 4)), Tensor((1, 4)), out=o),
    "add": lambda o: F.add(Tensor((1, 4)), Tensor((1, 4)), out=o),
    "mul": lambda o: F.mul(Tensor((1, 4)), Tensor((1, 4)), out=o),
    "scale": lambda o: F.scale(Tensor((1, 4)), 2.0, out=o),
    "embedding": lambda o: F.embedding(Tensor((10, 4)), Tensor.from_list([1], dtype="I32"), out=o),
    "copy_": lambda o: o.copy_(Tensor((1, 4))),
}


@pytest.mark.parametrize("op", sorted(OUT_OPS))
def test_every_op_refuses_a_read_only_output_and_changes_nothing(op):
    o = _ro((1, 4), fill=7.0)
    with pytest.raises(errors.InvalidArgumentError, match="read-only"):
        OUT_OPS[op](o)
    assert o.to_list() == [7.0] * 4


def test_load_and_in_place_ops_refuse_read_only_tensors():
    o = _ro((1, 4), fill=7.0)
    with pytest.raises(errors.InvalidArgumentError, match="read-only"):
        o.load([1.0, 2.0, 3.0, 4.0])
    with pytest.raises(errors.InvalidArgumentError, match="read-only"):
        F.scale(o, 0.0, out=o)
    logits, ids = _ro((8,), fill=1.0), Tensor.from_list([1], dtype="I32")
    with pytest.raises(errors.InvalidArgumentError, match="read-only"):
        lib_check(lib.ce_repetition_penalty(logits.ptr, ids.ptr, 2.0))
    x, pos = _ro((2, 1, 4), fill=1.0), Tensor.from_list([0, 1], dtype="I32")
    with pytest.raises(errors.InvalidArgumentError, match="read-only"):
        F.rope_(x, pos, 4)
    assert o.to_list() == [7.0] * 4 and logits.to_list() == [1.0] * 8 and x.to_list() == [1.0] * 8


def lib_check(status):
    from toolkit.core.engine._lib import check
    check(status)


def test_selection_outputs_refuse_read_only_tensors():
    # every tensor held in a name for the call: a temporary's memory would be freed under it
    x = Tensor.from_list([[1.0, 3.0, 2.0]])
    ro_i, ro_f, ro_i2, ro_rows = _ro((1,), "I32", 0), _ro((1, 2)), _ro((1, 2), "I32", 0), _ro((4, 3))
    vals, idx = Tensor((1, 2)), Tensor((1, 2), "I32")
    with pytest.raises(errors.InvalidArgumentError, match="read-only"):
        lib_check(lib.ce_argmax(ro_i.ptr, x.ptr))
    with pytest.raises(errors.InvalidArgumentError, match="read-only"):
        lib_check(lib.ce_topk(ro_f.ptr, idx.ptr, x.ptr, 2))
    with pytest.raises(errors.InvalidArgumentError, match="read-only"):
        lib_check(lib.ce_topk(vals.ptr, ro_i2.ptr, x.ptr, 2))
    with pytest.raises(errors.InvalidArgumentError, match="read-only"):
        lib_check(lib.ce_copy_rows(ro_rows.ptr, 0, x.ptr))


def test_attention_refuses_read_only_outputs_and_caches():
    T, H, D = 2, 1, 4
    q = Tensor.from_list([0.1] * (T * H * D), shape=(T, H, D))
    kv = Tensor.from_list([0.2] * (T * H * D), shape=(T, H, D))
    pos = Tensor.from_list([0, 1], dtype="I32")
    ro_out, out, ro_probs = _ro((T, H, D)), Tensor((T, H, D)), _ro((H, T, T))
    with pytest.raises(errors.InvalidArgumentError, match="read-only"):
        lib_check(lib.ce_attention(ro_out.ptr, q.ptr, kv.ptr, kv.ptr, pos.ptr, T, 0.5, ffi.NULL))
    with pytest.raises(errors.InvalidArgumentError, match="read-only"):
        lib_check(lib.ce_attention(out.ptr, q.ptr, kv.ptr, kv.ptr, pos.ptr, T, 0.5, ro_probs.ptr))
    # attention_seqs writes the new keys and values into the caches: a read-only cache is refused
    # before anything is written; reading one (no new keys) is fine
    rows = ffi.new("int64_t[]", [T])
    kc, vc, ro_vc = _ro((8, H, D), fill=0.0), Tensor((8, H, D)).load([0.0] * (8 * H * D)), _ro((8, H, D), fill=0.0)
    with pytest.raises(errors.InvalidArgumentError, match="read-only.*sequence 0"):
        lib_check(lib.ce_attention_seqs(out.ptr, q.ptr, kv.ptr, kv.ptr, pos.ptr, 1, rows, _ptrs([kc]), _ptrs([vc]),
                                        0.5))
    assert kc.to_list() == [0.0] * (8 * H * D) and vc.to_list() == [0.0] * (8 * H * D)
    lib_check(lib.ce_attention_seqs(out.ptr, q.ptr, ffi.NULL, ffi.NULL, pos.ptr, 1, rows, _ptrs([kc]), _ptrs([ro_vc]),
                                    0.5))
    assert out.to_list() == [0.0] * (T * H * D)


_WRITE_INTO_READ_ONLY_MAP = r"""
import mmap, sys
from toolkit import errors
from toolkit.core.engine import functional as F
from toolkit.core.engine.tensor import Tensor
f = open(sys.argv[1], "rb")
mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
t = Tensor.wrap(mm, (16,), "F32")
try:
    F.scale(t, 2.0, out=t)
except errors.InvalidArgumentError as e:
    print("refused:", e)
"""


def test_writing_into_a_read_only_mapping_raises_instead_of_crashing(tmp_path):
    """A plugin that maps its own weight file read-only and then edits a weight in place: the
    engine's store used to be a SIGSEGV that ended the interpreter. In a child process, so that a
    crash fails this test instead of ending the session."""
    p = tmp_path / "w.bin"
    p.write_bytes(struct.pack("16f", *range(16)))
    r = subprocess.run([sys.executable, "-c", _WRITE_INTO_READ_ONLY_MAP, str(p)], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert r.returncode == 0 and r.stdout.startswith("refused: scale: out is read-only"), (r.returncode,
                                                                                          r.stdout, r.stderr[-2000:])
    assert p.read_bytes() == struct.pack("16f", *range(16))


_WRAPPED_VIEWS_IN_A_CYCLE = r"""
import gc, mmap
from toolkit.core.engine.tensor import Tensor
for i in range(100):
    class Holder:
        pass
    h = Holder()
    h.mm = mmap.mmap(-1, 1 << 16)
    h.view = memoryview(h.mm)          # as the loaders keep a mapped file, tensors over its slices
    h.ts = [Tensor.wrap(h.view[64 * j: 64 * j + 64], (16,), "F32") for j in range(20)]
    h.me = h                           # a reference cycle: only the collector frees it
    del h
    if i % 10 == 0:
        gc.collect()
gc.collect()
print("collected")
"""


def test_tensors_over_memoryview_slices_survive_the_cycle_collector():
    """A model held in a reference cycle is freed by the collector, and with it the tensors over
    slices of its mapped file: a memoryview lending its buffer to the engine crashed the collector
    (CPython 3.11 clears the view's managed buffer while the export is still held; SIGSEGV seen in
    CI). Tensor.wrap holds the exporter under the view instead. In a child process, as a crash would
    end the session."""
    r = subprocess.run([sys.executable, "-c", _WRAPPED_VIEWS_IN_A_CYCLE], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert r.returncode == 0 and r.stdout.strip() == "collected", (r.returncode, r.stderr[-2000:])
