"""Registering hooks: contexts, filters, TransformerLens-style functions, edits and errors."""
import pytest

from toolkit import errors
from toolkit.core.engine import functional as F
from toolkit.core.engine.tensor import Tensor
from toolkit.interp import read_only

from interp_common import PROMPT


def test_identity_hooks_leave_logits_bit_identical(model):
    base = model.logits(PROMPT).to_list()
    every = lambda t, hook: None  # noqa: E731
    with model.hooks(fwd_hooks=[(lambda name: True, every)]):
        assert model.logits(PROMPT).to_list() == base
    assert model.run_with_hooks(PROMPT, fwd_hooks=[("blocks.*", lambda t, h: t)]).to_list() == base


def test_transformer_lens_style_hook_runs_unchanged(model):
    seen = []

    def f(t, hook):
        seen.append((hook.name, hook.layer(), t.shape))
        hook.ctx["calls"] = hook.ctx.get("calls", 0) + 1

    with model.hooks(fwd_hooks=[("blocks.5.hook_resid_post", f), ("hook_embed", f),
                                ("blocks.5.attn.hook_pattern", f)]):
        model.logits(PROMPT)
    T = len(model.tokenizer.encode(PROMPT))
    assert seen == [("hook_embed", None, (T, 576)), ("blocks.5.attn.hook_pattern", 5, (9, T, T)),
                    ("blocks.5.hook_resid_post", 5, (T, 576))]
    assert model.model.hook_set.points["hook_embed"].ctx["calls"] == 1


def test_hooks_are_gone_after_the_context(model):
    with model.hooks(fwd_hooks=[("blocks.*.hook_resid_post", lambda t, h: None)]):
        assert len(model.model.hook_set.active) == model.config.num_hidden_layers
    assert model.model.hook_set.active == {}
    with pytest.raises(RuntimeError, match="boom"):
        with model.hooks(fwd_hooks=[("blocks.0.hook_mlp_out", lambda t, h: None)]):
            raise RuntimeError("boom")
    assert model.model.hook_set.active == {}


def test_a_raising_hook_surfaces_and_leaves_nothing_behind(model):
    def bad(t, hook):
        raise KeyError("from the hook")

    with pytest.raises(KeyError, match="from the hook") as info:
        with model.hooks(fwd_hooks=[("blocks.3.hook_attn_out", bad)]):
            model.logits(PROMPT)
    assert any("blocks.3.hook_attn_out" in n for n in getattr(info.value, "__notes__", []))
    assert model.model.hook_set.active == {}
    with pytest.raises(KeyError):
        model.generate(PROMPT, max_new_tokens=3, fwd_hooks=[("blocks.1.hook_resid_pre", bad)])
    assert model.model.hook_set.active == {}
    # the model still works and gives the same answer
    assert model.generate_ids(PROMPT, max_new_tokens=3) == model.generate_ids(PROMPT, max_new_tokens=3)


def test_filters(model):
    names = model.model.hook_set.resolve
    assert names("blocks.*.attn.hook_pattern") == [f"blocks.{i}.attn.hook_pattern" for i in range(30)]
    assert names(["blocks.1.hook_resid_pre", "hook_embed"]) == ["hook_embed", "blocks.1.hook_resid_pre"]
    assert names(lambda n: n.endswith("ln_final.hook_scale")) == ["ln_final.hook_scale"]
    assert names(["hook_logits", "blocks.2?.hook_resid_mid"]) == [f"blocks.{i}.hook_resid_mid" for i in range(20, 30)] + [
        "hook_logits"]
    with pytest.raises(errors.ArgumentTypeError):
        names(3)
    handles = model.add_hook("blocks.2.*", lambda t, h: None)
    assert len(handles) == sum(n.startswith("blocks.2.") for n in model.hook_names())
    model.remove_hooks("blocks.2.hook_resid_*")
    assert "blocks.2.hook_resid_pre" not in model.model.hook_set.active
    assert "blocks.2.hook_mlp_out" in model.model.hook_set.active
    handles[0].remove()
    model.remove_hooks()
    assert model.model.hook_set.active == {}
    with pytest.raises(errors.ArgumentTypeError):
        model.add_hook("hook_embed", "not a function")


def test_hook_tensors_are_copies_that_stay_valid(model):
    kept = {}

    def keep(t, hook):
        kept[hook.name] = t
    with model.hooks(fwd_hooks=[("blocks.0.ln1.hook_normalized", keep), ("blocks.0.ln2.hook_normalized", keep)]):
        model.logits(PROMPT)
    _, cache = model.run_with_cache(PROMPT, names_filter="blocks.0.ln*.hook_normalized")
    assert kept["blocks.0.ln1.hook_normalized"].to_list() == cache["normalized", 0, "ln1"].to_list()
    assert kept["blocks.0.ln1.hook_normalized"].to_list() != kept["blocks.0.ln2.hook_normalized"].to_list()


def test_returned_tensors_replace_and_are_shape_checked(model):
    base = model.logits(PROMPT).to_list()
    zero = model.run_with_hooks(PROMPT, fwd_hooks=[("blocks.3.hook_mlp_out", lambda t, h: Tensor(t.shape))])
    assert max(abs(a - b) for a, b in zip(zero.to_list(), base)) > 0.1

    def in_place(t, hook):
        t.copy_(Tensor(t.shape))
    assert model.run_with_hooks(PROMPT, fwd_hooks=[("blocks.3.hook_mlp_out", in_place)]).to_list() == zero.to_list()
    with pytest.raises(errors.ShapeError, match="blocks.3.hook_mlp_out"):
        model.run_with_hooks(PROMPT, fwd_hooks=[("blocks.3.hook_mlp_out", lambda t, h: Tensor((1, 576)))])
    # read_only hooks cannot edit
    assert model.run_with_hooks(PROMPT, fwd_hooks=[("blocks.3.hook_mlp_out", read_only(in_place))]).to_list() == base


def test_editing_the_pattern_changes_the_output(model):
    base = model.logits(PROMPT).to_list()

    def first_token_only(p, hook):                                   # all attention on position 0
        H, T, K = p.shape
        one = Tensor.from_list([[1.0] + [0.0] * (K - 1)] * T)
        for h in range(H):
            p[h].copy_(one)
    a = model.run_with_hooks(PROMPT, fwd_hooks=[("blocks.4.attn.hook_pattern", first_token_only)]).to_list()
    # the same through the values: z of every position = v of position 0 of the head's KV head
    vs = {}

    def z_from_v0(z, hook):
        v = vs["v"]                                                   # [pos, kv_head, d_head]
        G = z.shape[1] // v.shape[1]
        for h in range(z.shape[1]):
            row = v[0][h // G].reshape(1, -1)
            zh = z.permute(1, 0, 2)[h]
            zh.copy_(Tensor(zh.shape))
            F.add(zh, row, out=zh)
    b = model.run_with_hooks(PROMPT, fwd_hooks=[("blocks.4.attn.hook_v", lambda t, h: vs.update(v=t)),
                                                ("blocks.4.attn.hook_z", z_from_v0)]).to_list()
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-3
    assert max(abs(x - y) for x, y in zip(a, base)) > 1e-2


def test_hooks_context_yields_the_model_and_accepts_returned_views(model):
    base = model.logits(PROMPT).to_list()
    with model.hooks(fwd_hooks=[("blocks.0.attn.hook_q", lambda t, h: t.permute(1, 0, 2).contiguous()
                                 .permute(1, 0, 2))]) as m:
        assert m is model
        assert m.logits(PROMPT).to_list() == base  # a non-contiguous copy of q: nothing changes
