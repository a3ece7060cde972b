"""Calling the model from inside a hook (a probe that runs a second prompt, a cache of another
prompt taken mid-pass) must not change the pass that called the hook."""
import pytest

from toolkit.interp import read_only

from interp_common import PROMPT


def _bits(t):
    return bytes(t.contiguous().memoryview())


@pytest.mark.parametrize("name", ["blocks.3.attn.hook_q", "blocks.3.attn.hook_pattern", "blocks.3.mlp.hook_pre",
                                  "blocks.3.hook_resid_post", "hook_embed"])
@pytest.mark.parametrize("readonly", [False, True])
def test_a_forward_pass_inside_a_hook_leaves_the_outer_pass_alone(model, name, readonly):
    ids = model.tokenizer.encode(PROMPT)
    base = model.logits(ids)
    inner = []

    def probe(t, hook):  # same number of rows as the outer pass: the case that shares buffers
        inner.append(model.logits(ids))
    logits = model.run_with_hooks(ids, fwd_hooks=[(name, read_only(probe) if readonly else probe)])
    assert _bits(logits) == _bits(base)
    assert _bits(inner[0]) == _bits(base)


def test_run_with_cache_inside_a_hook(model):
    ids = model.tokenizer.encode(PROMPT)
    base = model.logits(ids)
    _, want = model.run_with_cache(ids, names_filter="blocks.0.hook_resid_post")
    got = []

    def probe(t, hook):
        got.append(model.run_with_cache(ids, names_filter="blocks.0.hook_resid_post")[1])
    logits = model.run_with_hooks(ids, fwd_hooks=[("blocks.3.attn.hook_k", probe)])
    assert _bits(logits) == _bits(base)
    assert _bits(got[0]["resid_post", 0]) == _bits(want["resid_post", 0])


def test_a_decode_step_inside_a_registered_hook_keeps_the_outer_spans(model):
    """A registered hook that runs a one-token pass during a one-token decode step: the outer
    step's hooks must still see the outer sequence's positions."""
    prompt = model.tokenizer.encode(PROMPT)
    seen, busy = [], []

    def probe(t, hook):
        if not busy:
            busy.append(1)
            try:
                model.logits([prompt[0]])
            finally:
                busy.pop()

    def record(t, hook):
        if not busy:
            seen.append(hook.ctx["spans"][0].pos0)
    with model.hooks(fwd_hooks=[("blocks.1.hook_resid_post", probe), ("blocks.5.hook_resid_post", record)]):
        model.generate_ids(prompt, max_new_tokens=3)
    assert seen == [0, len(prompt), len(prompt) + 1]
