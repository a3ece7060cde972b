"""Token events from generation (brief contract 4): what `m.stream(..., details=True)` yields."""
import math

import pytest

from toolkit.common.generation import TokenEvent, summary_line

PROMPT = "The capital of France is"


def test_events_match_the_plain_stream(model):
    kw = dict(max_new_tokens=12, temperature=0.8, top_p=0.9, seed=7)
    pieces = list(model.stream(PROMPT, **kw))
    events = list(model.stream(PROMPT, details=True, **kw))
    assert all(isinstance(e, TokenEvent) for e in events)
    assert "".join(e.text for e in events) == "".join(pieces)
    assert [e.token_id for e in events if not e.eos] == model.generate_ids(PROMPT, **kw)
    assert [e.index for e in events] == list(range(len(events)))
    assert events[0].phase == "prefill" and events[0].n_input == len(model.tokenizer.encode(PROMPT))
    assert all(e.phase == "decode" and e.n_input == 1 for e in events[1:])
    assert all(e.seconds > 0 for e in events)


def test_probabilities_are_the_models_own(model):
    events = list(model.stream(PROMPT, max_new_tokens=4, details=True, top=5))
    first = events[0]
    # greedy: the sampled token is the most likely one, and top is sorted, most likely first
    assert first.top[0][0] == first.token_id
    assert first.top[0][1] == first.text == " Paris"
    probs = [p for _, _, p in first.top]
    assert probs == sorted(probs, reverse=True) and len(first.top) == 5
    assert 0 < first.prob <= 1 and math.isclose(math.exp(first.logprob), first.prob, rel_tol=1e-4)
    # against a softmax computed here from the logits of the same prompt
    row = model.logits(PROMPT).tolist()[-1]
    mx = max(row)
    logz = mx + math.log(sum(math.exp(v - mx) for v in row))
    assert math.isclose(first.logprob, row[first.token_id] - logz, abs_tol=1e-4)


def test_probabilities_ignore_the_penalty_and_temperature(model):
    """prob is the model's distribution: a penalty only changes what gets sampled."""
    plain = list(model.stream(PROMPT, max_new_tokens=1, details=True))
    hot = list(model.stream(PROMPT, max_new_tokens=1, details=True, temperature=5.0, top_k=1, seed=1,
                            repetition_penalty=2.0))
    assert plain[0].token_id == hot[0].token_id
    assert math.isclose(plain[0].prob, hot[0].prob, rel_tol=1e-6)


def test_eos_event_ends_a_chat_turn(model):
    prompt = model.apply_chat_template([{"role": "user", "content": "Say hi"}])
    events = list(model.stream(prompt, max_new_tokens=64, details=True))
    assert events[-1].eos and events[-1].token_id in model.tokenizer.eos_ids
    assert not any(e.eos for e in events[:-1])
    assert "".join(e.text for e in events) == model.generate(prompt, max_new_tokens=64)


def test_stop_string_cuts_the_event_text(model):
    kw = dict(max_new_tokens=24, stop=["\n"], stop_at_eos=False)
    events = list(model.stream(PROMPT, details=True, **kw))
    text = "".join(e.text for e in events)
    assert text == model.generate(PROMPT, **kw) and "\n" not in text
    assert [e.token_id for e in events] == model.generate_ids(PROMPT, **kw)


def test_summary_line(model):
    events = list(model.stream(PROMPT, max_new_tokens=5, details=True, top=0))
    line = summary_line(events)
    assert line.startswith("[prefill] 5 tokens in ") and "[decode] 4 tokens" in line and line.endswith("5 new tokens")
    assert all(e.top == [] for e in events)


def test_bad_top_is_a_typed_error(model):
    from toolkit import errors

    with pytest.raises(errors.InvalidArgumentError, match="top must be in"):
        list(model.stream(PROMPT, max_new_tokens=2, details=True, top=10**9))
    with pytest.raises(errors.InvalidArgumentError):
        list(model.stream(PROMPT, max_new_tokens=2, details=True, top=-1))
    with pytest.raises(errors.ArgumentTypeError):
        list(model.stream(PROMPT, max_new_tokens=2, details=True, top=2.5))


def test_probs_false_keeps_ids_and_timings(model):
    full = list(model.stream(PROMPT, max_new_tokens=6, details=True))
    lean = list(model.stream(PROMPT, max_new_tokens=6, details=True, probs=False))
    assert [e.token_id for e in lean] == [e.token_id for e in full]
    assert [e.text for e in lean] == [e.text for e in full]
    assert all(math.isnan(e.prob) and math.isnan(e.logprob) and e.top == [] for e in lean)
    assert all(e.seconds > 0 for e in lean)


def test_hooks_apply_to_every_step_of_the_stream(model):
    seen = []
    events = list(model.plugin.stream_text(PROMPT, details=True, max_new_tokens=3,
                                           hooks=[("blocks.0.hook_resid_post", lambda t, hook: seen.append(t.shape))]))
    assert len(events) == 3 and seen == [(5, 576), (1, 576), (1, 576)]
