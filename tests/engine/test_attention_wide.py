"""Attention in 512-bit registers (run when the vector width is 512) gives the 256-bit kernels' bits.

Every shape the kernels split differently: 1, 2 and 3 query heads per kv head (the tiles' row
counts) and more, head dims with and without an 8-dim tail after the 32-dim tiles, keys not a
multiple of 4, F16 caches, queries with several 256-key chunks, decode and prefill.
"""
import pytest

from toolkit.core.engine import backend as B
from toolkit.core.engine import functional as F
from toolkit.core.engine.backend import Tensor
from floats import rand_list


_probe = B.vector_probe()
WHY_NOT = None if _probe["available"] else _probe["reason"]
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=f"this CPU or build has no 512-bit kernels: {WHY_NOT}")


@pytest.mark.parametrize("Hq, Hkv, D", [(9, 3, 64), (4, 2, 64), (2, 2, 32), (10, 2, 40), (7, 1, 72)])
@pytest.mark.parametrize("T, n_kv", [(1, 1), (1, 103), (5, 5), (3, 600)])
@pytest.mark.parametrize("kv_dtype", ["F32", "F16"])
def test_512_bit_attention_has_the_256_bit_bits(Hq, Hkv, D, T, n_kv, kv_dtype):
    S = n_kv + 2
    q = Tensor.from_list(rand_list(T * Hq * D, 1), (T, Hq, D))
    k = Tensor.from_list(rand_list(S * Hkv * D, 2), (S, Hkv, D)).to(kv_dtype)
    v = Tensor.from_list(rand_list(S * Hkv * D, 3), (S, Hkv, D)).to(kv_dtype)
    pos = list(range(n_kv - T, n_kv))
    got = {}
    for bits in (256, 512):  # the conftest puts the setting back
        B.set_vector_bits(bits)
        out, probs = F.scaled_dot_product_attention(q, k, v, pos, n_kv, return_probs=True)
        got[bits] = (out.to_list(), probs.to_list())
    assert got[512] == got[256]
