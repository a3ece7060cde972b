"""ce_attention_seqs: several sequences' rows, each against its own cache, in one call.

Each sequence must get exactly the bits ce_attention gives it alone (batch invariance rests on it),
its new keys and values must land in its cache, and a bad call must change no cache.
"""
import math

import pytest

from toolkit import errors
from toolkit.core.engine import backend as B
from toolkit.core.engine import functional as F
from toolkit.core.engine.backend import Tensor
from floats import rand_list

Hq, Hkv, D = 9, 3, 64  # the default model's heads, so the larger cases run on both threads


def make_seqs(specs, kv_dtype="F32", cap=600, seed=0):
    """specs: (cached keys, new rows) per sequence. Returns caches (k, v) with the cached part filled,
    and the new rows' q, k, v stacked, with their positions."""
    caches, q, kn, vn, pos = [], [], [], [], []
    for s, (cached, new) in enumerate(specs):
        k = Tensor.from_list(rand_list(cap * Hkv * D, seed + 10 * s), (cap, Hkv, D)).to(kv_dtype)
        v = Tensor.from_list(rand_list(cap * Hkv * D, seed + 10 * s + 1), (cap, Hkv, D)).to(kv_dtype)
        caches.append((k, v))
        q += rand_list(new * Hq * D, seed + 10 * s + 2)
        kn += rand_list(new * Hkv * D, seed + 10 * s + 3)
        vn += rand_list(new * Hkv * D, seed + 10 * s + 4)
        pos += list(range(cached, cached + new))
    N = len(pos)
    return (caches, Tensor.from_list(q, (N, Hq, D)), Tensor.from_list(kn, (N, Hkv, D)),
            Tensor.from_list(vn, (N, Hkv, D)), pos)


def alone(specs, caches, q, kn, vn, pos, scale):
    """Each sequence by itself: copy_rows then ce_attention, on clones of its caches."""
    outs, r0 = [], 0
    for (cached, new), (k, v) in zip(specs, caches):
        k, v = k.clone(), v.clone()
        F.copy_rows_(k, cached, kn[r0:r0 + new])
        F.copy_rows_(v, cached, vn[r0:r0 + new])
        outs.append(F.scaled_dot_product_attention(q[r0:r0 + new], k, v, pos[r0:r0 + new], cached + new,
                                                   scale).to_list())
        r0 += new
    return outs


@pytest.mark.parametrize("kv_dtype", ["F32", "F16"])
@pytest.mark.parametrize("specs", [
    [(0, 1)],                                   # first token of one sequence
    [(5, 1), (40, 1), (0, 1), (99, 1)],         # a decode step of four
    [(0, 7), (12, 1), (255, 1), (300, 3)],      # prefill chunks beside decodes, one past a key chunk
    [(250, 9), (511, 1), (3, 2)],               # queries straddling the 256-key chunk boundary
])
@pytest.mark.parametrize("threads", [1, 2])
def test_each_sequence_gets_its_bits_alone(specs, kv_dtype, threads):
    was = B.get_threads()
    B.set_threads(threads)
    try:
        caches, q, kn, vn, pos = make_seqs(specs, kv_dtype)
        scale = 1.0 / math.sqrt(D)
        want = alone(specs, caches, q, kn, vn, pos, scale)
        out = F.attention_seqs(q, pos, [n for _, n in specs], [k for k, _ in caches], [v for _, v in caches],
                               kn, vn, scale)
        r0 = 0
        for (cached, new), w, (k, v) in zip(specs, want, caches):
            assert out[r0:r0 + new].to_list() == w               # bit for bit
            # the new rows are in the cache, in its dtype
            assert k[cached:cached + new].to_list() == kn[r0:r0 + new].to(kv_dtype).to("F32").to_list()
            assert v[cached:cached + new].to_list() == vn[r0:r0 + new].to(kv_dtype).to("F32").to_list()
            r0 += new
    finally:
        B.set_threads(was)


def test_without_new_rows_the_caches_are_only_read():
    specs = [(9, 1), (3, 2)]
    caches, q, kn, vn, pos = make_seqs(specs)
    before = [(k.to_list(), v.to_list()) for k, v in caches]
    out = F.attention_seqs(q, pos, [1, 2], [k for k, _ in caches], [v for _, v in caches])
    assert [(k.to_list(), v.to_list()) for k, v in caches] == before
    r0 = 0
    for (cached, new), (k, v) in zip(specs, caches):
        want = F.scaled_dot_product_attention(q[r0:r0 + new], k, v, pos[r0:r0 + new], cached + new)
        assert out[r0:r0 + new].to_list() == want.to_list()
        r0 += new


def test_prepared_kvset_is_reusable():
    specs = [(4, 1), (8, 1)]
    caches, q, kn, vn, pos = make_seqs(specs)
    kv = F.KVSet([1, 1], [k for k, _ in caches], [v for _, v in caches])
    a = F.attention_seqs(q, pos, None, kv, None).to_list()
    assert F.attention_seqs(q, pos, None, kv, None).to_list() == a


def bad_call():
    specs = [(4, 1), (8, 2)]
    caches, q, kn, vn, pos = make_seqs(specs, cap=16)
    args = dict(q=q, pos=pos, rows=[1, 2], k_caches=[k for k, _ in caches], v_caches=[v for _, v in caches],
                k_new=kn, v_new=vn)
    return caches, args


@pytest.mark.parametrize("change, error, words", [
    (lambda a, c: {"rows": [1, 1]}, errors.ShapeError, "add up to 2"),
    (lambda a, c: {"rows": [2, 2]}, errors.ShapeError, "more than"),
    (lambda a, c: {"rows": [0, 3]}, errors.InvalidArgumentError, "at least 1"),
    (lambda a, c: {"pos": [4, 8, 10]}, errors.InvalidArgumentError, "not consecutive"),
    (lambda a, c: {"pos": [4, 15, 16]}, errors.IndexOutOfRangeError, "do not fit"),
    (lambda a, c: {"k_caches": [c[0][0], c[0][0]]}, errors.InvalidArgumentError, "share a KV cache"),
    (lambda a, c: {"v_new": None}, errors.InvalidArgumentError, "both k_new and v_new"),
    (lambda a, c: {"k_caches": [c[0][0]]}, errors.InvalidArgumentError, "one row count"),
    (lambda a, c: {"k_caches": [c[0][0], "cache"]}, errors.ArgumentTypeError, "must be a Tensor"),
    (lambda a, c: {"pos": [4, 8]}, errors.ShapeError, "pos must be [3]"),
    (lambda a, c: {"k_new": Tensor((3, Hkv, D + 1))}, errors.ShapeError, "do not match"),
])
def test_bad_calls_raise_and_change_no_cache(change, error, words):
    caches, args = bad_call()
    args.update(change(args, caches))
    before = [(k.to_list(), v.to_list()) for k, v in caches]
    with pytest.raises(error, match=words.replace("[", r"\[").replace("]", r"\]")):
        F.attention_seqs(**args)
    assert [(k.to_list(), v.to_list()) for k, v in caches] == before


def test_a_bad_sequence_is_named():
    caches, args = bad_call()
    args["k_caches"] = [caches[0][0], Tensor((16, Hkv + 1, D))]
    with pytest.raises(errors.ShapeError, match="sequence 1"):
        F.attention_seqs(**args)
