"""Indices from other libraries (NumPy's int64 from an argmax, an array's .tolist()-able rows) work
wherever a plain int does: layers, heads, positions, k, periods, token ids. A stand-in class keeps
NumPy out of the tests (only the buffer-protocol test may import it)."""
import pytest

import toolkit
from toolkit.interp import activation_patching, induction_scores, steering_hooks, zero_ablate_heads

from interp_common import PROMPT


class Int:
    """Integer-like, as numpy.int64 is: __index__, and not an int subclass."""

    def __init__(self, v):
        self.v = v

    def __index__(self):
        return self.v


class Float:
    """Real-number-like, as numpy.float32 is (registered as numbers.Real, not a float subclass)."""

    def __init__(self, v):
        self.v = v

    def __float__(self):
        return float(self.v)


import numbers  # noqa: E402

numbers.Real.register(Float)


class Array:
    """A 1-D or [1, T] array: .tolist() like NumPy's."""

    def __init__(self, rows):
        self.rows = rows

    def tolist(self):
        return self.rows


def test_integer_likes_index_the_cache_and_interventions(model):
    ids = model.tokenizer.encode(PROMPT)
    _, cache = model.run_with_cache(ids)
    assert cache["resid_post", Int(3)] is cache["resid_post", 3]
    assert cache.logit_lens(k=Int(2)).ids == cache.logit_lens(k=2).ids
    assert cache.accumulated_resid(layer=Int(4)).shape == cache.accumulated_resid(layer=4).shape
    assert zero_ablate_heads(model, [(Int(3), Int(0))])[0][0] == "blocks.3.attn.hook_z"
    assert steering_hooks(model, Int(3), [0.0] * 576, scale=Float(2.0))[0][0] == "blocks.3.hook_resid_pre"
    r = activation_patching(model, ids, ids, layers=[Int(0)], positions=[Int(-1)], answer=" Paris", wrong=" Rome")
    assert r.layers == [0] and r.positions == [len(ids) - 1]
    seqs = [[1] + [100, 200, 300] * 2]
    assert induction_scores(model, seqs, period=Int(3), start=Int(1)) == induction_scores(model, seqs, period=3, start=1)


def test_arrays_of_ids_and_real_likes_in_generation(model):
    ids = model.tokenizer.encode(PROMPT)
    want = model.generate_ids(ids, max_new_tokens=3)
    assert model.generate_ids(Array(ids), max_new_tokens=3) == want
    assert model.generate_ids(Array([ids]), max_new_tokens=3) == want  # a batch of one, as TransformerLens's tokens
    assert bytes(model.logits(Array(ids)).memoryview()) == bytes(model.logits(ids).memoryview())
    assert model.generate(ids, max_new_tokens=3, temperature=Float(0.5), seed=Int(1)) == \
        model.generate(ids, max_new_tokens=3, temperature=0.5, seed=1)
    with pytest.raises(toolkit.errors.ArgumentTypeError, match="one sequence"):
        model.logits(Array([ids, ids]))


def test_heads_as_an_array_of_pairs(model):
    """np.argwhere(scores > x) gives an [n, 2] array of (layer, head) rows."""
    want = zero_ablate_heads(model, [(3, 0), (4, 1)])
    got = zero_ablate_heads(model, Array([[3, 0], [4, 1]]))
    assert [n for n, _ in got] == [n for n, _ in want]
    assert [n for n, _ in zero_ablate_heads(model, [Array([3, 0])])] == ["blocks.3.attn.hook_z"]
