"""Per-request hooks reach the model as forward_batch(..., seq_hooks=[...]), one entry per sequence
of the pass; a model without that argument refuses hooked requests up front."""
import pytest

from toolkit import errors
from toolkit.common.managers.batch_manager import BatchManager


class _Wrapped:
    """Delegates to the real model; records what each pass was given."""

    def __init__(self, lm):
        self.lm, self.config, self.tokenizer, self.calls = lm, lm.config, lm.tokenizer, []

    def new_cache(self, n):
        return self.lm.new_cache(n)


class _WithSeqHooks(_Wrapped):
    def forward_batch(self, seqs, logits="last", seq_hooks=None):
        self.calls.append([list(ids) for ids, _ in seqs] if seq_hooks is None else
                          [(list(ids), h) for (ids, _), h in zip(seqs, seq_hooks)])
        if seq_hooks is not None:
            assert len(seq_hooks) == len(seqs)
            for (ids, _), hooks in zip(seqs, seq_hooks):
                for name, fn in hooks or ():
                    fn(list(ids), name)  # stands in for "the hook sees this sequence's rows only"
        return self.lm.forward_batch(seqs, logits=logits)


class _WithoutSeqHooks(_Wrapped):
    def forward_batch(self, seqs, logits="last"):
        return self.lm.forward_batch(seqs, logits=logits)


def test_hooks_pass_through_per_sequence(model, prompts):
    fake = _WithSeqHooks(model.model)
    seen = {"a": [], "c": []}
    hook_a = ("blocks.0.hook_resid_post", lambda ids, name: seen["a"].append(ids))
    hook_c = ("blocks.2.attn.hook_pattern", lambda ids, name: seen["c"].append((name, ids)))
    bm = BatchManager(fake, prefill_chunk=64)
    bm.add_request("a", prompts[1], max_new_tokens=3, hooks=[hook_a])
    bm.add_request("b", prompts[2], max_new_tokens=5)
    bm.add_request("c", prompts[5], max_new_tokens=2, hooks=[hook_c])
    res = bm.run()
    # a's hook saw a's prompt, then each token a was fed; never another request's tokens
    assert seen["a"][0] == prompts[1] and [ids[0] for ids in seen["a"][1:]] == res["a"].token_ids[:-1]
    assert seen["c"][0] == ("blocks.2.attn.hook_pattern", prompts[5]) and len(seen["c"]) == 2
    first = fake.calls[0]
    # each request's own hooks, by name (the manager wraps each fn to know whose hook raised; the
    # seen lists above show the wrapped fns ran)
    assert [[n for n, _ in h] if h else h for _, h in first] == [[hook_a[0]], None, [hook_c[0]]]
    # once c has left, passes still give one entry per sequence; once a has too, no seq_hooks at all
    assert [[n for n, _ in h] if h else h for _, h in fake.calls[2]] == [[hook_a[0]], None]
    assert fake.calls[-1] == [[res["b"].token_ids[-2]]]
    for rid, i, n in (("a", 1, 3), ("b", 2, 5), ("c", 5, 2)):
        assert res[rid].token_ids == model.generate_ids(prompts[i], max_new_tokens=n)


def test_hooks_need_a_model_that_takes_seq_hooks(model, prompts):
    bm = BatchManager(_WithoutSeqHooks(model.model))
    with pytest.raises(errors.UnsupportedError, match="seq_hooks"):
        bm.add_request("a", prompts[1], hooks=[("hook_embed", lambda t, h: None)])
    bm.add_request("a", prompts[1], max_new_tokens=2)  # without hooks it runs
    assert bm.run()["a"].token_ids == model.generate_ids(prompts[1], max_new_tokens=2)


def test_a_failing_pass_leaves_the_requests_runnable(model, prompts):
    class Flaky(_WithSeqHooks):
        fail_next = False

        def forward_batch(self, seqs, logits="last", seq_hooks=None):
            out = self.lm.forward_batch(seqs, logits=logits)  # the caches advance, then the pass fails
            if Flaky.fail_next:
                Flaky.fail_next = False
                raise RuntimeError("hook failed")
            return out

    bm = BatchManager(Flaky(model.model))
    bm.add_request("a", prompts[1], max_new_tokens=3)
    bm.forward_step()
    Flaky.fail_next = True
    with pytest.raises(RuntimeError, match="hook failed"):
        bm.forward_step()
    assert bm.run()["a"].token_ids == model.generate_ids(prompts[1], max_new_tokens=3)


def test_a_request_whose_hook_raises_ends_alone_with_the_error(model, prompts):
    """One request's broken hook must not stall the batch: that request ends with finish_reason
    'error' (its collector re-raises), the others finish with the tokens they get alone."""
    lm = model.model
    calls = []

    def broken(t, hook):
        calls.append(hook.name)
        if len(calls) == 3:  # in its second pass, after the prefill went through
            raise RuntimeError("my probe is broken")

    bm = BatchManager(lm)
    bm.add_request("ok", prompts[0], max_new_tokens=4)
    bm.add_request("bad", prompts[1], max_new_tokens=4, hooks=[("blocks.2.hook_resid_post", broken)])
    bm.add_request("ok2", prompts[2], max_new_tokens=4)
    res = bm.run()
    assert res["bad"].finish_reason == "error" and isinstance(res["bad"].error, RuntimeError)
    assert "my probe is broken" in str(res["bad"].error)
    for rid, p in (("ok", prompts[0]), ("ok2", prompts[2])):
        assert res[rid].finish_reason == "length"
        assert res[rid].token_ids == model.generate_ids(p, max_new_tokens=4)
    # step() and wait() re-raise it to whoever collects the failed request
    calls.clear()
    bm.add_request("bad2", prompts[1], max_new_tokens=4, hooks=[("blocks.2.hook_resid_post", broken)])
    with pytest.raises(RuntimeError, match="my probe is broken"):
        bm.wait(["bad2"])
    assert bm.kv_usage.tokens == 0 and not bm.pending  # the failed requests freed their caches


def test_an_interrupt_from_a_request_hook_still_stops_the_pass(model, prompts):
    def interrupt(t, hook):
        raise KeyboardInterrupt

    bm = BatchManager(model.model)
    bm.add_request("a", prompts[0], max_new_tokens=2, hooks=[("blocks.0.hook_resid_post", interrupt)])
    with pytest.raises(KeyboardInterrupt):
        bm.run()
    bm.cancel("a")
    bm.add_request("b", prompts[0], max_new_tokens=2)
    assert bm.run()["b"].token_ids == model.generate_ids(prompts[0], max_new_tokens=2)


def _alone_hooked(lm, prompt, n, hooks):
    cache = lm.new_cache(len(prompt) + n)
    feed, out = prompt, []
    for _ in range(n):
        logits = lm.forward_batch([(feed, cache)], logits="last", seq_hooks=[hooks])
        from toolkit.core.engine import functional as F

        out.append(F.sample(logits.reshape(-1), 0.0))
        feed = [out[-1]]
    return out


def test_real_model_hooks_touch_only_their_request(model, prompts):
    lm = model.model
    rows = []

    def record(t, hook):
        rows.append(t.shape[0])

    def ablate(t, hook):
        from toolkit.core.engine.backend import Tensor

        return Tensor(t.shape)  # zeros: this request's MLP output of block 3 removed

    bm = BatchManager(lm, prefill_chunk=4)
    bm.add_request("a", prompts[1], max_new_tokens=3, hooks=[("blocks.0.hook_resid_post", record)],
                   stop_at_eos=False)
    bm.add_request("b", prompts[2], max_new_tokens=3, stop_at_eos=False)
    bm.add_request("c", prompts[6], max_new_tokens=3, hooks=[("blocks.3.hook_mlp_out", ablate)],
                   stop_at_eos=False, keep_logits=True)
    res = bm.run()
    n = len(prompts[1])
    assert rows == [4] * (n // 4) + ([n % 4] if n % 4 else []) + [1, 1]  # a's rows only, chunk by chunk
    assert res["a"].token_ids == model.generate_ids(prompts[1], max_new_tokens=3, stop_at_eos=False)
    assert res["b"].token_ids == model.generate_ids(prompts[2], max_new_tokens=3, stop_at_eos=False)
    assert res["c"].token_ids == _alone_hooked(lm, prompts[6], 3, [("blocks.3.hook_mlp_out", ablate)])
    plain = lm.forward_batch([(prompts[6], lm.new_cache(len(prompts[6])))], logits="last").to_list()[0]
    assert res["c"].logits[0].to_list() != plain  # the ablation did act on c
    with pytest.raises(errors.InvalidArgumentError, match="no_such_hook"):
        bm.add_request("d", prompts[1], hooks=[("blocks.0.no_such_hook", record)])
