"""Bad arguments to the ready-made interventions, patching and scores raise typed errors up front;
nothing is silently wrapped around (layer 30 of a 30-layer model is not layer 0)."""
import pytest

from toolkit import errors
from toolkit.interp import activation_patching, induction_scores, steering_hooks, zero_ablate_heads

CLEAN = "The Eiffel Tower is in the city of"
BAD = "The Colosseum is in the city of"


@pytest.mark.parametrize("kwargs, exc", [
    (dict(layers=[30]), errors.IndexOutOfRangeError),
    (dict(layers=[-31]), errors.IndexOutOfRangeError),
    (dict(layers=["a"]), errors.ArgumentTypeError),
    (dict(layers=[1.5]), errors.ArgumentTypeError),
    (dict(layers=5), errors.ArgumentTypeError),
    (dict(layers=[0], positions=[100]), errors.IndexOutOfRangeError),
    (dict(layers=[0], positions=[True]), errors.ArgumentTypeError),
    (dict(hook=3), errors.ArgumentTypeError),
])
def test_activation_patching_rejects_bad_layers_positions_and_hooks(model, kwargs, exc):
    with pytest.raises(exc):
        activation_patching(model, CLEAN, BAD, answer=" Paris", wrong=" Rome", **kwargs)


def test_activation_patching_negative_indices_count_from_the_end(model):
    r = activation_patching(model, CLEAN, BAD, answer=" Paris", wrong=" Rome", layers=[-1], positions=[-1])
    assert r.layers == [29] and r.positions == [len(model.tokenizer.encode(BAD)) - 1]


def test_activation_patching_metric_must_return_a_number(model):
    with pytest.raises(errors.ArgumentTypeError, match="metric"):
        activation_patching(model, CLEAN, BAD, metric=lambda logits: "x", layers=[0], positions=[0])


@pytest.mark.parametrize("kwargs, exc", [
    (dict(vector=[float("nan")] + [0.0] * 575), errors.InvalidArgumentError),
    (dict(vector=[float("inf")] * 576), errors.InvalidArgumentError),
    (dict(vector=[0.0] * 576, scale=float("nan")), errors.InvalidArgumentError),
    (dict(vector=[0.0] * 576, scale="a"), errors.ArgumentTypeError),
    (dict(vector=5), errors.ArgumentTypeError),
])
def test_steering_hooks_reject_non_finite_and_mistyped_values(model, kwargs, exc):
    with pytest.raises(exc):
        steering_hooks(model, 3, **kwargs)


@pytest.mark.parametrize("heads", [3, None, "3,0"])
def test_zero_ablate_heads_rejects_a_non_list(model, heads):
    with pytest.raises(errors.ArgumentTypeError):
        zero_ablate_heads(model, heads)


def test_induction_scores_take_text_like_every_other_call(model):
    text = "one two three four five one two three four five"
    ids = model.tokenizer.encode(text)
    assert len(ids) == 10
    assert induction_scores(model, [text], period=5) == induction_scores(model, [ids], period=5)


@pytest.mark.parametrize("seqs", [None, 5])
def test_induction_scores_rejects_a_non_list(model, seqs):
    with pytest.raises(errors.ArgumentTypeError):
        induction_scores(model, seqs, period=2)


def test_activation_patching_reaches_the_norm_hooks(model):
    """ln1/ln2 outputs have a position dim too: 'ln1.normalized' patches them; the bare
    'normalized' is ambiguous and says which to pick (it used to claim it had no position dim)."""
    r = activation_patching(model, CLEAN, BAD, hook="ln1.normalized", answer=" Paris", wrong=" Rome",
                            layers=[0], positions=[-1])
    same = activation_patching(model, CLEAN, BAD, hook="blocks.{}.ln1.hook_normalized".split(".", 2)[2],
                               answer=" Paris", wrong=" Rome", layers=[0], positions=[-1])
    assert r.effects == same.effects
    with pytest.raises(errors.InvalidArgumentError, match="ln1.normalized"):
        activation_patching(model, CLEAN, BAD, hook="normalized", answer=" Paris", wrong=" Rome", layers=[0])
    with pytest.raises(errors.InvalidArgumentError, match="position"):
        activation_patching(model, CLEAN, BAD, hook="pattern", answer=" Paris", wrong=" Rome", layers=[0])
