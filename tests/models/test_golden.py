"""The real default model (SmolLM2-135M-Instruct, Q4_1 GGUF) against HF transformers fp32 outputs."""
import math

import pytest

from golden_checks import LOGIT_TOL, check_last_logits, check_top10


def _prompts(golden_logits):
    return golden_logits["prompts"]


def test_chat_template_rendering_matches_golden(model, golden_tokenization):
    for case in golden_tokenization["chat_templates"]:
        text = model.apply_chat_template(case["messages"], add_generation_prompt=case["add_generation_prompt"])
        assert text == case["text"]
        assert model.tokenizer.encode(text) == case["ids"]


def test_prompt_ids_match_golden(model, golden_logits):
    for p in _prompts(golden_logits):
        if p["kind"] == "chat":
            text = model.apply_chat_template(p["messages"], add_generation_prompt=True)
            assert text == p["text"]
        assert model.tokenizer.encode(p["text"]) == p["input_ids"], p["name"]


@pytest.mark.parametrize("index", range(4))
def test_logits_match_golden(model, golden_logits, index):
    prompt = _prompts(golden_logits)[index]
    logits = model.logits(prompt["input_ids"])
    assert logits.shape == (len(prompt["input_ids"]), model.config.vocab_size)
    worst_top = check_top10(logits, prompt)
    worst_last = check_last_logits(logits, prompt)
    assert worst_top <= LOGIT_TOL and worst_last <= LOGIT_TOL, (prompt["name"], worst_top, worst_last)


@pytest.mark.parametrize("index", range(4))
def test_greedy_continuation_matches_golden(model, golden_logits, index):
    prompt = _prompts(golden_logits)[index]
    gold = prompt["greedy"]["ids"]
    ids = model.generate_ids(prompt["input_ids"], max_new_tokens=len(gold), temperature=0, stop_at_eos=False)
    assert ids == gold, prompt["name"]


def test_greedy_text_stops_at_eos(model, golden_logits):
    prompt = _prompts(golden_logits)[2]  # chat_capital ends with <|im_end|> after a few tokens
    text = model.generate(prompt["input_ids"], max_new_tokens=48, temperature=0)
    assert text == prompt["greedy"]["text_until_eos"]


def _norm(row):
    return math.sqrt(sum(v * v for v in row))


def test_residual_norms_and_attention_patterns(model, golden_hidden):
    lm = model.model
    n_layers = model.config.num_hidden_layers
    seen = {}

    def keep(name):
        def fn(t, _name):
            seen[name] = t.tolist()
        return fn

    names = ["hook_embed"] + [f"blocks.{i}.hook_resid_post" for i in range(n_layers)]
    names += ["blocks.0.attn.hook_pattern", "blocks.29.attn.hook_pattern", "ln_final.hook_normalized"]
    handles = [lm.add_hook(name, keep(name)) for name in names]
    try:
        model.logits(golden_hidden["input_ids"])
    finally:
        for h in handles:
            h.remove()
    gold = golden_hidden["hidden_state_l2_norms"]
    ours = [[_norm(r) for r in seen["hook_embed"]]]
    ours += [[_norm(r) for r in seen[f"blocks.{i}.hook_resid_post"]] for i in range(n_layers - 1)]
    for k in range(n_layers):
        for t in range(len(gold[k])):
            assert ours[k][t] == pytest.approx(gold[k][t], rel=1e-4, abs=1e-3), (k, t)
    raw_last = [_norm(r) for r in seen[f"blocks.{n_layers - 1}.hook_resid_post"]]
    assert raw_last == pytest.approx(golden_hidden["last_layer_raw_output_l2_norms"], rel=1e-4)
    final = [_norm(r) for r in seen["ln_final.hook_normalized"]]
    assert final == pytest.approx(gold[n_layers], rel=1e-4)
    for layer in ("0", "29"):
        probs = seen[f"blocks.{layer}.attn.hook_pattern"]
        want = golden_hidden["attention_probs"][layer]
        for h in range(len(want)):
            for q in range(len(want[h])):
                assert probs[h][q] == pytest.approx(want[h][q], abs=1e-4), (layer, h, q)


def test_no_hooks_left_behind(model):
    assert model.model.hook_set.active == {}
