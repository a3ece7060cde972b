"""BatchManager behaviour: results, streams, status, stop strings, cancel, KV budget, bad input."""
import math

import pytest
from batch_helpers import sampling_for

from toolkit import errors
from toolkit.common.managers.batch_manager import BatchManager
from toolkit.common.managers.kv_budget import kv_bytes_per_token


def test_results_by_id_match_generate(model, prompts):
    bm = BatchManager(model.model, max_batch_size=2, prefill_chunk=8)
    for i in range(4):
        bm.add_request(("req", i), prompts[i], **sampling_for(i, max_new_tokens=3))
    results = bm.run()
    assert sorted(results) == [("req", i) for i in range(4)]
    for i in range(4):
        r = results["req", i]
        kw = sampling_for(i, max_new_tokens=3)
        assert r.token_ids == r.to_list() == model.generate_ids(prompts[i], **kw)
        assert r.text == model.generate(prompts[i], **kw)
        assert r.finish_reason == "length" and r.prompt_tokens == len(prompts[i]) and r.logits is None
    assert bm.run() == {} and bm.step() is None and bm.pending == 0


def test_unchunked_prefill(model, prompts):
    bm = BatchManager(model.model, prefill_chunk=None)
    for i in (3, 1):
        bm.add_request(i, prompts[i], max_new_tokens=2)
    bm.forward_step()
    assert bm.status(3).state == bm.status(1).state == "decode"  # both whole prompts in one pass
    res = bm.run()
    assert [res[i].token_ids for i in (3, 1)] == [model.generate_ids(prompts[i], max_new_tokens=2) for i in (3, 1)]


def test_step_keeps_the_guide_shape(model, prompts):
    bm = BatchManager(model.model)
    bm.add_request(1000, [float(t) for t in prompts[1]], max_new_tokens=6)  # floats, as tokenize returns
    bm.add_request(1001, prompts[2], max_new_tokens=2)
    outs = {}
    for _ in range(2):
        t = bm.step()
        assert t.dtype == "I32"
        outs[bm.last_request_id] = t.to_list()
    assert bm.last_request_id == 1000  # the short one finished first
    assert outs == {1000: model.generate_ids(prompts[1], max_new_tokens=6),
                    1001: model.generate_ids(prompts[2], max_new_tokens=2)}
    assert bm.step() is None
    with pytest.raises(AttributeError):
        bm.last_request_id = 5


def test_stream_and_status(model, prompts):
    bm = BatchManager(model.model, max_batch_size=1, prefill_chunk=4)
    bm.add_request("a", prompts[3], max_new_tokens=5)
    bm.add_request("b", prompts[1], max_new_tokens=3)
    s = bm.status("b")
    assert (s.state, s.prompt_tokens, s.generated_tokens, s.kv_tokens, s.finish_reason) == (
        "queued", len(prompts[1]), 0, 0, None)
    bm.forward_step()
    s = bm.status("a")
    assert (s.state, s.prefilled_tokens, s.kv_tokens) == ("prefill", 4, len(prompts[3]) + 5)
    events = list(bm.stream("a"))  # drives the passes itself: nobody else steps
    ids = [e.token_id for e in events if e.token_id is not None]
    assert ids == model.generate_ids(prompts[3], max_new_tokens=5)
    assert "".join(e.text for e in events) == model.generate(prompts[3], max_new_tokens=5)
    assert bm.status("a").state == "finished" and bm.status("a").finish_reason == "length"
    assert bm.status("a").kv_tokens == 0
    assert [e.token_id for e in bm.stream("b")] == model.generate_ids(prompts[1], max_new_tokens=3)
    results = bm.run()
    assert set(results) == {"a", "b"}
    with pytest.raises(errors.InvalidArgumentError):
        bm.status("a")  # collected: forgotten


def test_stop_string_leaves_the_batch_in_the_same_step(model, prompts):
    lm = model.model
    full = model.generate(prompts[1], max_new_tokens=12)
    stop = full.strip().split()[1]  # a word the greedy text reaches after a few tokens
    bm = BatchManager(lm, max_batch_size=1)
    bm.add_request("s", prompts[1], max_new_tokens=12, stop=[stop])
    bm.add_request("next", prompts[2], max_new_tokens=2)
    finished = []
    while not finished:
        finished = bm.forward_step()
    assert finished == ["s"]
    assert bm.status("s").finish_reason == "stop" and bm.kv_usage.tokens == 0  # freed before the next pass
    assert bm.status("s").generated_tokens < 12
    bm.forward_step()
    assert bm.status("next").state == "decode"  # admitted by the very next pass
    res = bm.run()
    assert res["s"].text == model.generate(prompts[1], max_new_tokens=12, stop=[stop])
    assert res["s"].token_ids == model.generate_ids(prompts[1], max_new_tokens=12, stop=[stop])
    assert stop not in res["s"].text
    assert res["next"].token_ids == model.generate_ids(prompts[2], max_new_tokens=2)


def test_cancel_frees_the_slot_at_once(model, prompts):
    bm = BatchManager(model.model, max_batch_size=1)
    bm.add_request("long", prompts[1], max_new_tokens=50)
    bm.add_request("short", prompts[2], max_new_tokens=3)
    bm.add_request("queued", prompts[0], max_new_tokens=3)
    bm.forward_step()
    bm.forward_step()
    assert bm.kv_usage.tokens == len(prompts[1]) + 50
    assert bm.cancel("long") is True
    assert bm.kv_usage.tokens == 0 and bm.status("long").state == "cancelled"
    assert bm.cancel("queued") is True  # never started
    bm.forward_step()
    assert bm.status("short").state == "decode"
    res = bm.run()
    assert res["long"].finish_reason == "cancelled" and len(res["long"].token_ids) == 2
    assert res["long"].token_ids == model.generate_ids(prompts[1], max_new_tokens=2)
    assert res["queued"].finish_reason == "cancelled" and res["queued"].token_ids == []
    assert res["short"].token_ids == model.generate_ids(prompts[2], max_new_tokens=3)
    bm.add_request("done", prompts[2], max_new_tokens=1)
    bm.forward_step()
    assert bm.cancel("done") is False  # already finished
    assert bm.run()["done"].finish_reason == "length"


def test_kv_budget_of_two_sequences_runs_six_requests(model, prompts):
    picks = [1, 2, 5, 6, 10, 13]  # prompts of 3 to 7 tokens
    size = max(len(prompts[i]) for i in picks) + 2  # every request needs exactly `size` KV slots
    budget = 2 * size
    bm = BatchManager(model.model, max_batch_size=16, kv_budget_tokens=budget)
    for i in picks:
        bm.add_request(i, prompts[i], max_new_tokens=size - len(prompts[i]))
    bm.forward_step()
    assert [bm.status(i).state for i in picks] == ["decode"] * 2 + ["queued"] * 4  # FIFO wait, no failure
    assert bm.kv_usage.tokens == budget
    peak_seen = 0
    while bm.pending:
        bm.forward_step()
        peak_seen = max(peak_seen, bm.kv_usage.tokens)
    results = bm.run()
    assert sorted(results) == sorted(picks)
    for i in picks:
        assert results[i].token_ids == model.generate_ids(prompts[i], max_new_tokens=size - len(prompts[i]))
    use = bm.kv_usage
    assert use.tokens == 0 and use.bytes == 0
    assert use.peak_tokens == budget == use.budget_tokens and peak_seen <= budget
    assert use.peak_bytes == use.peak_tokens * kv_bytes_per_token(model.model)


def test_kv_budget_in_bytes_and_requests_that_never_fit(model, prompts):
    per = kv_bytes_per_token(model.model)
    c = model.config
    assert per == 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 4  # K and V, F32
    assert model.model.new_cache(10).nbytes == 10 * per  # the accounting is what the caches really take
    bm = BatchManager(model.model, kv_budget_bytes=20 * per + per // 2)
    assert bm.kv_usage.budget_tokens == 20
    with pytest.raises(errors.InvalidArgumentError, match="never run"):
        bm.add_request("big", prompts[1], max_new_tokens=20 - len(prompts[1]) + 1)
    bm.add_request("fits", prompts[1], max_new_tokens=20 - len(prompts[1]))
    assert bm.run()["fits"].finish_reason in ("length", "eos")
    with pytest.raises(errors.InvalidArgumentError):
        BatchManager(model.model, kv_budget_tokens=10, kv_budget_bytes=10 * per)
    with pytest.raises(errors.InvalidArgumentError):
        BatchManager(model.model, kv_budget_bytes=per - 1)
    with pytest.raises(errors.ArgumentTypeError):
        BatchManager(model.model, kv_budget_tokens=2.5)
    with pytest.raises(errors.InvalidArgumentError):
        BatchManager(model.model, prefill_chunk=0)


def test_zero_new_tokens_and_eos(model, prompts):
    bm = BatchManager(model.model)
    bm.add_request("zero", prompts[1], max_new_tokens=0)
    assert bm.run()["zero"].token_ids == [] and bm.kv_usage.peak_tokens == 0


@pytest.mark.parametrize("rid, exc", [(None, errors.ArgumentTypeError), (True, errors.ArgumentTypeError),
                                      ([1], errors.ArgumentTypeError), ({"a": 1}, errors.ArgumentTypeError),
                                      (math.nan, errors.InvalidArgumentError),
                                      (math.inf, errors.InvalidArgumentError)])
def test_malformed_request_ids(model, rid, exc):
    bm = BatchManager(model.model)
    with pytest.raises(exc):
        bm.add_request(rid, [1, 2, 3])
    with pytest.raises(errors.ToolkitError):
        bm.status(rid)
    with pytest.raises(errors.ToolkitError):
        bm.cancel(rid)


@pytest.mark.parametrize("ids, exc", [([math.nan], errors.InvalidArgumentError),
                                      ([1, math.inf], errors.InvalidArgumentError),
                                      ([1.5], errors.ArgumentTypeError), ([True], errors.ArgumentTypeError),
                                      (["1"], errors.ArgumentTypeError), ("abc", errors.ArgumentTypeError),
                                      ([-1], errors.IndexOutOfRangeError),
                                      ([10 ** 9], errors.IndexOutOfRangeError),
                                      ([], errors.InvalidArgumentError), (None, errors.ArgumentTypeError)])
def test_malformed_token_ids(model, ids, exc):
    bm = BatchManager(model.model)
    with pytest.raises(exc):
        bm.add_request("r", ids)
    assert bm.pending == 0
    bm.add_request("r", [1, 2], max_new_tokens=1)  # the failed add left the id free


def test_bad_requests_and_duplicates(model, prompts):
    bm = BatchManager(model.model)
    bm.add_request("x", prompts[1], max_new_tokens=1)
    with pytest.raises(errors.InvalidArgumentError, match="already in use"):
        bm.add_request("x", prompts[2], max_new_tokens=1)
    with pytest.raises(errors.ArgumentTypeError):
        bm.add_request("y", prompts[1], no_such_setting=1)
    with pytest.raises(errors.InvalidArgumentError):
        bm.add_request("y", prompts[1], temperature=-1.0)
    with pytest.raises(errors.ContextLengthError):
        bm.add_request("y", prompts[1], max_new_tokens=model.config.max_position_embeddings)
    with pytest.raises(errors.ArgumentTypeError):
        bm.add_request("y", prompts[1], hooks=[("hook_embed",)])
    with pytest.raises(errors.InvalidArgumentError):
        bm.status("never-added")
    with pytest.raises(errors.InvalidArgumentError):
        bm.stream("never-added")
    with pytest.raises(errors.InvalidArgumentError):
        BatchManager(model.model, max_batch_size=0)
    with pytest.raises(errors.InvalidArgumentError, match="twice"):
        bm.wait(["x", "x"])
    with pytest.raises(errors.ArgumentTypeError):
        bm.wait([["x"]])
    assert set(bm.run()) == {"x"}


class _FailOn:
    """A tokenizer whose stream decoder fails on one token id (as an id the vocab lacks would)."""

    def __init__(self, tok, bad):
        self.tok, self.bad = tok, bad

    def stream(self, skip_special_tokens=False):
        inner, bad = self.tok.stream(skip_special_tokens=skip_special_tokens), self.bad

        class _Dec:
            def step(self, t):
                if t == bad:
                    raise errors.TokenizerError(f"cannot decode {t}")
                return inner.step(t)

            def flush(self):
                return inner.flush()
        return _Dec()


def test_one_failing_request_does_not_disturb_the_others(model, prompts):
    bad = model.generate_ids(prompts[1], max_new_tokens=1)[0]
    good = model.generate_ids(prompts[2], max_new_tokens=3)
    assert bad not in good
    bm = BatchManager(model.model, tokenizer=_FailOn(model.tokenizer, bad))
    bm.add_request("bad", prompts[1], max_new_tokens=3)
    bm.add_request("good", prompts[2], max_new_tokens=3)
    res = bm.run()
    assert res["bad"].finish_reason == "error" and isinstance(res["bad"].error, errors.TokenizerError)
    assert bm.kv_usage.tokens == 0
    assert res["good"].token_ids == good and res["good"].finish_reason == "length"
    bm.add_request("bad", prompts[1], max_new_tokens=3)
    bm.add_request("good", prompts[2], max_new_tokens=3)
    with pytest.raises(errors.TokenizerError):
        bm.wait(["good", "bad"])
    assert bm.pending == 0 and bm.run() == {}  # both collected
    bm.add_request("bad", prompts[1], max_new_tokens=3)
    with pytest.raises(errors.TokenizerError):
        bm.step()


def test_a_cache_that_cannot_be_allocated_fails_only_its_request(model, prompts):
    class NoBigCaches:
        def __init__(self, lm):
            self.lm, self.config, self.tokenizer = lm, lm.config, lm.tokenizer
            self.forward_batch = lm.forward_batch

        def new_cache(self, n):
            if n > 20:
                raise errors.OutOfMemoryError(f"no memory for {n} slots")
            return self.lm.new_cache(n)

    bm = BatchManager(NoBigCaches(model.model))
    bm.add_request("big", prompts[1], max_new_tokens=30)
    bm.add_request("small", prompts[2], max_new_tokens=2)
    res = bm.run()
    assert res["big"].finish_reason == "error" and isinstance(res["big"].error, errors.OutOfMemoryError)
    assert res["small"].token_ids == model.generate_ids(prompts[2], max_new_tokens=2)
    assert bm.kv_usage.tokens == 0 and bm.kv_usage.peak_tokens == len(prompts[2]) + 2


def test_discard_forgets_a_request_in_any_state(model, prompts):
    bm = BatchManager(model.model, max_batch_size=1)
    bm.add_request("run", prompts[1], max_new_tokens=20, private=True)
    bm.add_request("wait", prompts[2], max_new_tokens=2)
    bm.add_request("done", prompts[0], max_new_tokens=0)
    bm.forward_step()
    assert bm.kv_usage.tokens > 0
    assert [bm.discard(r) for r in ("run", "wait", "done", "never")] == [True, True, True, False]
    assert bm.kv_usage.tokens == 0 and bm.pending == 0 and bm.run() == {}
    with pytest.raises(errors.InvalidArgumentError):
        bm.status("run")
    with pytest.raises(errors.ArgumentTypeError):
        bm.discard([1])


def test_models_whose_caches_report_no_size(model):
    class Opaque:
        def __init__(self, lm):
            self.config, self.tokenizer, self.forward_batch = lm.config, lm.tokenizer, lm.forward_batch

        def new_cache(self, n):
            return object()

    with pytest.raises(errors.UnsupportedError, match="kv_budget_tokens"):
        BatchManager(Opaque(model.model), kv_budget_bytes=10 ** 6)
    use = BatchManager(Opaque(model.model), kv_budget_tokens=100).kv_usage
    assert (use.tokens, use.bytes, use.budget_tokens, use.budget_bytes) == (0, None, 100, None)


@pytest.mark.timeout(60)
def test_stepping_the_manager_from_inside_its_own_pass_raises_instead_of_hanging(model, prompts):
    """A hook of a request that waits on the same manager (infer_batch, run, wait, forward_step)
    would wait for the pass it is part of: it raises, and the manager and the model stay usable."""
    bm = BatchManager(model.model)
    calls = {"run": lambda: bm.run(), "forward_step": lambda: bm.forward_step(), "step": lambda: bm.step(),
             "wait": lambda: bm.wait(["inner"])}
    for name, call in calls.items():
        seen = []

        def probe(t, hook, call=call):
            if not seen:
                seen.append(1)
                if name == "wait":
                    bm.add_request("inner", prompts[1], max_new_tokens=1)
                call()
        bm.add_request("outer", prompts[0], max_new_tokens=2, hooks=[("blocks.0.hook_resid_post", probe)])
        # the request whose hook raised ends with the error; nothing else is affected
        res = bm.run()
        assert res["outer"].finish_reason == "error" and isinstance(res["outer"].error, errors.UnsupportedError)
        assert "inside" in str(res["outer"].error)
        bm.discard("inner")
        assert bm.pending == 0
    bm.add_request("after", prompts[0], max_new_tokens=2)
    assert bm.run()["after"].token_ids == model.generate_ids(prompts[0], max_new_tokens=2)


def test_takes_the_toolkit_model_handle_and_refuses_other_objects(model, prompts):
    """BatchManager(m) with the handle toolkit.load returns (what the README's `model` is) works like
    BatchManager(m.model); an object that is no model is an ArgumentTypeError, not an AttributeError."""
    bm = BatchManager(model, prefill_chunk=8)
    bm.add_request("a", prompts[0], max_new_tokens=3)
    assert bm.run()["a"].token_ids == model.generate_ids(prompts[0], max_new_tokens=3)
    for bad in ("x", None, object()):
        with pytest.raises(errors.ArgumentTypeError):
            BatchManager(bad)


def test_the_readme_example_runs(model):
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    block = text.split("### Many requests at once", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    scope = {"m": model}
    exec(block, scope)  # noqa: S102 - the README's own code
    res = scope["results"]
    assert res["a"].finish_reason == "length" and len(res["a"].token_ids) == 16
    assert res["b"].text == model.generate("The capital of France is", max_new_tokens=16, stop=["."])
