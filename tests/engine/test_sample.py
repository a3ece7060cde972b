"""Sampling in the engine: greedy, temperature, top-k, top-p, min-p, the draw, repetition penalty."""
import math

import pytest

from toolkit import errors
from toolkit.core.engine import functional as F
from toolkit.core.engine.backend import Tensor

LOGITS = [1.0, 3.0, 2.0, 3.0, -1.0, 0.5]  # ids 1 and 3 tie for the max


def probs(logits, t):
    e = [math.exp((x - max(logits)) / t) for x in logits]
    s = sum(e)
    return [v / s for v in e]


def pick(logits, r, **kw):
    return F.sample(Tensor.from_list(logits), r=r, **kw)


def test_greedy_takes_the_first_max():
    assert pick(LOGITS, 0.0, temperature=0.0) == 1
    assert pick(LOGITS, 0.9, temperature=0.0) == 1
    assert pick(LOGITS, 0.9, temperature=1.0, top_k=1) == 1


def test_draw_walks_the_sorted_distribution():
    p = probs(LOGITS, 1.0)
    order = sorted(range(len(p)), key=lambda i: (-p[i], i))  # descending, lower id first on ties
    acc = 0.0
    for i in order:
        mid = acc + p[i] / 2
        assert pick(LOGITS, mid, temperature=1.0) == i
        acc += p[i]


def test_temperature_sharpens():
    # with a tiny temperature nearly all mass sits on the two tied maxima
    assert pick(LOGITS, 0.999, temperature=0.01) in (1, 3)


def test_top_k_and_top_p_and_min_p_restrict_the_candidates():
    for r in (0.0, 0.3, 0.6, 0.99):
        assert pick(LOGITS, r, temperature=1.0, top_k=2) in (1, 3)
        assert pick(LOGITS, r, temperature=1.0, top_p=0.5) in (1, 3)
        # min_p 0.5: keep tokens with p >= 0.5 * p_max: ids 1, 3 (p_max) and 2 (e^-1 = 0.37 < 0.5: dropped)
        assert pick(LOGITS, r, temperature=1.0, min_p=0.5) in (1, 3)
    assert pick(LOGITS, 0.99, temperature=1.0, min_p=0.3) == 2


def test_repetition_penalty_follows_the_ctrl_rule():
    t = Tensor.from_list([2.0, -2.0, 1.0, 4.0])
    F.repetition_penalty_(t, [0, 1, 1, 3], 2.0)
    assert t.to_list() == [1.0, -4.0, 1.0, 2.0]  # each distinct id once; positive /, negative *


@pytest.mark.parametrize("kw", [dict(temperature=float("nan")), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5),
                                dict(min_p=-0.1), dict(r=1.0), dict(r=-0.5)])
def test_bad_sampling_arguments(kw):
    args = dict(temperature=1.0, r=0.5)
    args.update(kw)
    with pytest.raises(errors.InvalidArgumentError):
        F.sample(Tensor.from_list(LOGITS), **args)


def test_bad_sampling_inputs():
    with pytest.raises(errors.DTypeError):
        F.sample(Tensor((4,), "I32"))
    with pytest.raises(errors.ArgumentTypeError):
        F.sample([1.0, 2.0])
    with pytest.raises(errors.IndexOutOfRangeError):
        F.repetition_penalty_(Tensor((4,)), [7], 1.2)
    with pytest.raises(errors.InvalidArgumentError):
        F.repetition_penalty_(Tensor((4,)), [1], 0.0)


def test_non_finite_logits_are_rejected():
    with pytest.raises(errors.InvalidArgumentError, match="finite"):
        F.sample(Tensor.from_list([float("nan"), 1.0]), temperature=1.0, r=0.5)
    with pytest.raises(errors.InvalidArgumentError, match="finite"):
        F.sample(Tensor.from_list([float("inf"), 1.0]), temperature=0.0)
