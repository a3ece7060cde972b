"""SamplingParams' range checks: one message per setting, whichever side of the range is wrong."""
import pytest

from toolkit import errors
from toolkit.common.generation import SamplingParams


@pytest.mark.parametrize("v", [0, 0.0, -1, 2, 1.5])
def test_top_p_outside_its_range_names_the_same_range(v):
    # 0 used to say "(0, 1]" and 2 "[0.0, 1.0]": the second invites top_p=0, which keeps no token
    with pytest.raises(errors.InvalidArgumentError, match=r"top_p must be in \(0\.0, 1\.0\], got"):
        SamplingParams(top_p=v)


@pytest.mark.parametrize("v", [0, -0.5])
def test_repetition_penalty_must_be_positive(v):
    with pytest.raises(errors.InvalidArgumentError, match=r"repetition_penalty must be in \(0\.0, inf\], got"):
        SamplingParams(repetition_penalty=v)


def test_edge_values_are_accepted():
    p = SamplingParams(top_p=1.0, repetition_penalty=1e-3, min_p=0.0, temperature=0.0)
    assert (p.top_p, p.repetition_penalty) == (1.0, 1e-3)
