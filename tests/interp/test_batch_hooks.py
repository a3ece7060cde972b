"""Hooks in a batched pass: each sequence's rows, per-sequence hook points and seq_hooks."""
import pytest

from toolkit import errors

PROMPTS = ["The capital of France is", "Hi", "Once upon a time, in a land far away, there lived"]


def _close(a, b, tol=1e-4):
    return max(abs(x - y) for x, y in zip(a, b)) <= tol * max(1.0, max(abs(x) for x in b))


def test_batched_hooks_see_each_sequence(model):
    lm = model.model
    ids = [model.tokenizer.encode(p) for p in PROMPTS]
    lens = [len(i) for i in ids]
    assert len(set(lens)) == 3
    # reference: each sequence alone
    single = []
    for x in ids:
        _, c = model.run_with_cache(x, names_filter=["blocks.2.hook_resid_post", "blocks.2.attn.hook_pattern"])
        single.append(c)
    stacked, patterns, mine = [], [], {}

    def whole(t, hook):
        stacked.append((t.tolist(), list(hook.ctx["spans"]), hook.ctx["seq"]))

    def pattern(t, hook):
        patterns.append((hook.ctx["seq"], t.shape, t.to_list()))

    def only(b):
        def f(t, hook):
            mine[b] = (t.tolist(), hook.ctx["spans"], hook.ctx["seq"])
        return f
    caches = [lm.new_cache(64) for _ in ids]
    seq_hooks = [[("blocks.2.hook_resid_post", only(0))], None, [("blocks.2.hook_resid_post", only(2))]]
    with model.hooks(fwd_hooks=[("blocks.2.hook_resid_post", whole), ("blocks.2.attn.hook_pattern", pattern)]):
        lm.forward_batch(list(zip(ids, caches)), logits="last", seq_hooks=seq_hooks)
    rows, spans, seq = stacked[0]
    assert seq is None and len(rows) == sum(lens)
    assert [(s.seq, s.row0, s.rows, s.pos0) for s in spans] == [(0, 0, lens[0], 0), (1, lens[0], lens[1], 0),
                                                                  (2, lens[0] + lens[1], lens[2], 0)]
    for s, c in zip(spans, single):
        want = c["resid_post", 2].tolist()
        for r in range(s.rows):
            assert _close(rows[s.row0 + r], want[r])
    # per-sequence pattern: once per sequence, its own shape, saying whose it is
    assert [(b, shape) for b, shape, _ in patterns] == [(b, (9, n, n)) for b, n in enumerate(lens)]
    for b, _, vals in patterns:
        assert _close(vals, single[b]["pattern", 2].to_list())
    # seq_hooks: only their sequence's rows
    assert set(mine) == {0, 2}
    for b in (0, 2):
        got, sp, seq = mine[b]
        assert seq == b and len(got) == lens[b] and [tuple(s) for s in sp] == [(b, 0, lens[b], 0)]
        assert all(_close(g, w) for g, w in zip(got, single[b]["resid_post", 2].tolist()))


def test_seq_hooks_edit_only_their_sequence(model):
    from toolkit.core.engine.tensor import Tensor

    lm = model.model
    ids = [model.tokenizer.encode(p) for p in PROMPTS]
    plain = lm.forward_batch([(x, lm.new_cache(64)) for x in ids], logits="last").tolist()
    zero = [("blocks.1.hook_mlp_out", lambda t, h: Tensor(t.shape))]
    edited = lm.forward_batch([(x, lm.new_cache(64)) for x in ids], logits="last",
                              seq_hooks=[None, zero, None]).tolist()
    assert edited[0] == plain[0] and edited[2] == plain[2] and edited[1] != plain[1]
    with pytest.raises(errors.ArgumentTypeError):
        lm.forward_batch([(x, lm.new_cache(64)) for x in ids], seq_hooks=[None, zero])
    with pytest.raises(errors.InvalidArgumentError, match="did you mean"):
        lm.forward_batch([(ids[0], lm.new_cache(64))], seq_hooks=[[("blocks.1.hook_mlp_outt", zero[0][1])]])
