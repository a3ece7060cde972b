"""Ablation, steering, activation patching, and hooks during generation."""
import pytest

from toolkit import errors
from toolkit.core.engine.tensor import Tensor
from toolkit.interp import activation_patching, mean_ablate_heads, steering_hooks, zero_ablate_heads

from interp_common import PROMPT


def test_zero_ablating_every_head_removes_the_attention_output(model):
    heads = [(7, h) for h in range(model.config.num_attention_heads)]
    ablated = model.run_with_hooks(PROMPT, fwd_hooks=zero_ablate_heads(model, heads)).to_list()
    no_attn = model.run_with_hooks(PROMPT, fwd_hooks=[("blocks.7.hook_attn_out", lambda t, h: Tensor(t.shape))])
    assert ablated == no_attn.to_list()
    one = model.run_with_hooks(PROMPT, fwd_hooks=zero_ablate_heads(model, [(7, 2)])).to_list()
    assert one != ablated and one != model.logits(PROMPT).to_list()
    with pytest.raises(IndexError):
        zero_ablate_heads(model, [(7, 9)])


def test_a_hook_can_ablate_a_head_by_item_assignment(model):
    """`z[:, h] = 0` in a hook, as a TransformerLens user writes it, is zero_ablate_heads."""
    def ablate(z, hook):
        z[:, 2] = 0
        z[:, 5] = 0.0

    by_hand = model.run_with_hooks(PROMPT, fwd_hooks=[("blocks.7.attn.hook_z", ablate)]).to_list()
    assert by_hand == model.run_with_hooks(PROMPT, fwd_hooks=zero_ablate_heads(model, [(7, 2), (7, 5)])).to_list()


def test_mean_ablation_puts_the_mean_at_every_position(model):
    hooks = mean_ablate_heads(model, [(3, 1), (3, 4)], reference=PROMPT)
    _, ref = model.run_with_cache(PROMPT, names_filter="blocks.3.attn.hook_z")
    _, cache = model.run_with_cache(PROMPT, names_filter="blocks.3.attn.hook_z", fwd_hooks=hooks)
    z, z0 = cache["z", 3].tolist(), ref["z", 3].tolist()
    T = len(z)
    for h in (1, 4):
        mean = [sum(z0[t][h][d] for t in range(T)) / T for d in range(64)]
        for t in range(T):
            assert z[t][h] == pytest.approx(mean, abs=1e-5)
    assert z[0][0] == z0[0][0]                                          # other heads untouched


def test_steering(model):
    base = model.generate(PROMPT, max_new_tokens=8)
    zero = steering_hooks(model, 6, [0.0] * 576)
    assert model.generate(PROMPT, max_new_tokens=8, fwd_hooks=zero) == base
    assert model.run_with_hooks(PROMPT, fwd_hooks=zero).to_list() == model.logits(PROMPT).to_list()
    # a large vector: the embedding of " cheese", pushed in from layer 6
    vec = model.model.embed_tokens.weight[model.tokenizer.encode(" cheese")[0]].to(("F32"))
    steered = model.generate(PROMPT, max_new_tokens=8, fwd_hooks=steering_hooks(model, 6, vec, scale=60.0))
    assert steered != base
    with pytest.raises(errors.ShapeError):
        steering_hooks(model, 6, [1.0, 2.0])


def test_hooks_apply_in_every_decode_step(model):
    ids = model.tokenizer.encode(PROMPT)
    vec = model.model.embed_tokens.weight[model.tokenizer.encode(" cheese")[0]].to("F32")
    calls = []

    def count(t, hook):
        calls.append(t.shape[0])
    hooks = steering_hooks(model, 4, vec, from_pos=len(ids) - 2, scale=30.0) + [("blocks.4.hook_resid_post", count)]
    new = model.generate_ids(ids, max_new_tokens=6, fwd_hooks=hooks)
    assert calls == [len(ids)] + [1] * (len(new) - 1)
    # teacher-forced with the same hooks, the whole sequence predicts the same tokens: the decode
    # steps saw the steered keys and values of the earlier positions through the KV cache
    logits = model.run_with_hooks(ids + new[:-1], fwd_hooks=hooks[:1]).tolist()
    greedy = [max(range(len(row)), key=row.__getitem__) for row in logits[len(ids) - 1:]]
    assert greedy == new
    assert "".join(model.stream(ids, max_new_tokens=6, fwd_hooks=hooks[:1])) == model.tokenizer.decode(new)
    assert model.model.hook_set.active == {}


def test_patching_clean_into_itself_is_zero(model):
    prompt = "The quick brown fox jumps over the"
    res = activation_patching(model, prompt, prompt, hook="resid_pre", answer=" lazy", wrong=" dog",
                              layers=[0, 14, 29])
    assert len(res.effects) == 3 and len(res.effects[0]) == len(model.tokenizer.encode(prompt))
    assert res.max_abs() == 0.0
    seen = []
    res = activation_patching(model, prompt, prompt, hook="attn_out", layers=[-1], positions=[0, -1],
                              metric=lambda logits: seen.append(logits.shape) or 1.0)
    assert res.effects == [[0.0, 0.0]] and res.layers == [29] and seen[0][0] == 7


def test_patching_finds_the_changed_token(model):
    clean, corrupt = "The Eiffel Tower is in the city of", "The Colosseum is in the city of"
    a, b = model.tokenizer.encode(clean), model.tokenizer.encode(corrupt)
    assert len(a) == len(b)
    res = activation_patching(model, clean, corrupt, hook="resid_pre", answer=" Paris", wrong=" Rome",
                              layers=[0], positions=range(len(a)))
    total = res.clean_metric - res.corrupted_metric
    assert abs(total) > 0.5
    differ = [p for p in range(len(a)) if a[p] != b[p]]
    for p, eff in zip(res.positions, res.effects[0]):
        if p not in differ:
            assert eff == 0.0
    with pytest.raises(errors.InvalidArgumentError, match="same length"):
        activation_patching(model, clean, "Hi", answer=" Paris", wrong=" Rome")
    with pytest.raises(errors.InvalidArgumentError):
        activation_patching(model, clean, corrupt, hook="pattern", answer=" Paris", wrong=" Rome")
