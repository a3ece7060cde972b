"""The hook table, its docs, names and layouts, and the Module call contract."""
import math
import pathlib

import pytest

from toolkit.core.engine import functional as F
from toolkit.core.engine import modules
from toolkit.interp import UnknownHookError, hooks_doc
from toolkit.core.engine.tensor import Tensor
from toolkit.models.llama.model import HOOK_POINTS

from interp_common import PROMPT

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "hooks.md"


def test_docs_are_generated_from_the_table():
    assert DOC.read_text(encoding="utf-8") == hooks_doc.render()
    for name, shape, _ in HOOK_POINTS:
        assert f"`{name}` | `{shape}`" in hooks_doc.render()


def test_hook_names_cover_the_table(model):
    names = model.hook_names()
    L = model.config.num_hidden_layers
    per_layer = [n for n, _, _ in HOOK_POINTS if "{i}" in n]
    assert len(names) == len(set(names)) == len(HOOK_POINTS) - len(per_layer) + L * len(per_layer)
    assert names[0] == "hook_embed" and names[-1] == "hook_logits"
    assert names.index("blocks.0.hook_resid_post") < names.index("blocks.1.hook_resid_pre")
    for tl_name in ("blocks.3.attn.hook_pattern", "blocks.0.ln1.hook_scale", "blocks.29.mlp.hook_pre_linear",
                    "blocks.5.attn.hook_rot_k", "ln_final.hook_normalized"):
        assert tl_name in names


def test_unknown_names_raise_with_suggestions(model):
    with pytest.raises(UnknownHookError, match="blocks.3.attn.hook_pattern") as info:
        model.add_hook("blocks.3.attn.hook_patern", lambda t, h: None)
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    with pytest.raises(UnknownHookError, match="hook_resid_post"):
        with model.hooks(fwd_hooks=[("blocks.0.hook_resid_pots", lambda t, h: None)]):
            pass
    with pytest.raises(UnknownHookError):
        model.run_with_cache(PROMPT, names_filter=["hook_embed", "blocks.99.hook_resid_pre"])
    with pytest.raises(UnknownHookError):
        model.run_with_hooks(PROMPT, fwd_hooks=[("blocks.*.hook_nothing", lambda t, h: None)])
    assert model.model.hook_set.active == {}


def test_module_call_observer_sees_every_block(model):
    seen = []

    class Obs:
        def enter(self, m):
            seen.append(("enter", m.hook_path))

        def exit(self, m):
            seen.append(("exit", m.hook_path))

    modules._call_observer = Obs()
    try:
        model.logits([1, 2, 3])
    finally:
        modules._call_observer = None
    entered = [p for e, p in seen if e == "enter"]
    assert entered[:6] == ["embed", "blocks.0", "blocks.0.ln1", "blocks.0.attn", "blocks.0.ln2", "blocks.0.mlp"]
    assert entered[-2:] == ["ln_final", "unembed"]
    assert sum(p == "blocks.29.attn" for p in entered) == 1
    assert [p for e, p in seen if e == "exit"].count("blocks.7") == 1
    # exits balance enters, also when a forward stops on an exception inside a block
    seen.clear()
    modules._call_observer = Obs()
    try:
        with pytest.raises(ZeroDivisionError):
            model.run_with_hooks([1, 2, 3], fwd_hooks=[("blocks.2.mlp.hook_post", lambda t, h: 1 / 0)])
    finally:
        modules._call_observer = None
    stack = []
    for e, p in seen:
        if e == "enter":
            stack.append(p)
        else:
            assert stack.pop() == p
    assert stack == [] and ("exit", "blocks.2.mlp") in seen


def test_q_and_k_hooks_use_hugging_face_layout(model):
    c = model.config
    assert c.rope_mode == "adjacent"  # GGUF weights: the engine's heads are permuted
    _, cache = model.run_with_cache(PROMPT, names_filter="blocks.4.attn.hook_*")
    T = cache["q", 4].shape[0]
    pos = list(range(T))
    for raw, rot in (("q", "rot_q"), ("k", "rot_k")):
        x = cache[raw, 4].clone()
        # HF rotates (i, i + D/2): only the un-permuted layout turns hook_q into hook_rot_q that way
        F.rope_(x, pos, c.head_dim, c.rope_theta, mode="half")
        want = cache[rot, 4].to_list()
        assert max(abs(a - b) for a, b in zip(x.to_list(), want)) < 1e-4
        y = cache[raw, 4].clone()
        F.rope_(y, pos, c.head_dim, c.rope_theta, mode="adjacent")
        assert max(abs(a - b) for a, b in zip(y.to_list(), want)) > 1e-2


def test_q_edits_are_written_back_in_the_engine_layout(model):
    base = model.logits(PROMPT).to_list()

    def swap_halves_back_and_forth(t, hook):  # an identity in HF layout made of real edits
        return t.clone()
    same = model.run_with_hooks(PROMPT, fwd_hooks=[("blocks.2.attn.hook_q", swap_halves_back_and_forth),
                                                   ("blocks.2.attn.hook_rot_k", swap_halves_back_and_forth)])
    assert same.to_list() == base
    # zero the second half of head 3's dims in HF layout; the scores the engine then computes must
    # be those of the edited query rotated the HF way against the (HF-layout) rotated keys
    from toolkit.core.engine.tensor import Tensor

    c = model.config
    D, G = c.head_dim, c.num_attention_heads // c.num_key_value_heads
    edited = {}

    def zero_upper_half(t, hook):
        head = t.permute(1, 0, 2)[3]                                      # [pos, D]
        T = head.shape[0]
        for r in range(T):
            head[r].copy_(Tensor.from_list(head[r].to_list()[:D // 2] + [0.0] * (D // 2)))
        edited["q"] = t.clone()
    _, cache = model.run_with_cache(PROMPT, names_filter=["blocks.2.attn.hook_attn_scores", "blocks.2.attn.hook_rot_k"],
                                    fwd_hooks=[("blocks.2.attn.hook_q", zero_upper_half)])
    q = edited["q"]
    T = q.shape[0]
    F.rope_(q, list(range(T)), D, c.rope_theta, mode="half")
    qh, kh = q.tolist(), cache["rot_k", 2].tolist()
    scores = cache["attn_scores", 2].tolist()
    for i in range(T):
        for j in range(i + 1):
            want = sum(a * b for a, b in zip(qh[i][3], kh[j][3 // G])) / math.sqrt(D)
            assert scores[3][i][j] == pytest.approx(want, abs=1e-3)


def test_scores_pattern_and_scale_agree(model):
    logits, cache = model.run_with_cache(PROMPT, names_filter=lambda n: n.startswith(("blocks.0.", "ln_final")))
    assert logits.to_list() == model.logits(PROMPT).to_list()  # reading scores keeps the fused kernel
    s = cache["attn_scores", 0]
    H, T, K = s.shape
    rows = s.tolist()
    assert all(rows[h][q][k] == float("-inf") for h in range(H) for q in range(T) for k in range(q + 1, K))
    probs = F.softmax(s).to_list()
    assert max(abs(a - b) for a, b in zip(probs, cache["pattern", 0].to_list())) < 1e-5
    x, scale = cache["resid_pre", 0].tolist(), cache["scale", 0, "ln1"].tolist()
    for r in range(len(x)):
        assert scale[r][0] == pytest.approx(math.sqrt(sum(v * v for v in x[r]) / len(x[r]) + model.config.rms_norm_eps),
                                            rel=1e-5)
    # editing the scores through the op-by-op path gives the same logits as the fused kernel
    edited = model.run_with_hooks(PROMPT, fwd_hooks=[("blocks.*.attn.hook_attn_scores", lambda t, h: None)])
    assert max(abs(a - b) for a, b in zip(edited.to_list(), logits.to_list())) < 1e-3


def test_edited_scale_renormalises(model):
    base = model.logits(PROMPT).to_list()
    same = model.run_with_hooks(PROMPT, fwd_hooks=[("blocks.1.ln2.hook_scale", lambda t, h: t.clone())])
    assert max(abs(a - b) for a, b in zip(same.to_list(), base)) < 1e-3

    def double(t, hook):
        F.scale(t, 2.0, out=t)
    halved = model.run_with_hooks(PROMPT, fwd_hooks=[("blocks.1.ln2.hook_scale", double)]).to_list()

    def halve_normalized(t, hook):
        F.scale(t, 0.5, out=t)
    want = model.run_with_hooks(PROMPT, fwd_hooks=[("blocks.1.ln2.hook_normalized", halve_normalized)]).to_list()
    assert max(abs(a - b) for a, b in zip(halved, want)) < 1e-3
    assert max(abs(a - b) for a, b in zip(halved, base)) > 1e-2


def test_every_module_can_be_called_on_its_own(model):
    lm = model.model
    _, cache = model.run_with_cache(PROMPT, names_filter=lambda n: n.startswith(("hook_embed", "blocks.0.",
                                                                                 "ln_final", "hook_logits")))
    x = cache["embed"]

    def close(a, b):
        return max(abs(u - v) for u, v in zip(a.to_list(), b.to_list())) < 1e-4
    assert close(lm.layers[0](x), cache["resid_post", 0])
    assert x.to_list() == cache["embed"].to_list()                   # the input is not touched
    assert close(lm.layers[0].self_attn(cache["normalized", 0, "ln1"]), cache["attn_out", 0])
    assert close(lm.layers[0].mlp(cache["normalized", 0, "ln2"]), cache["mlp_out", 0])
    assert close(lm.layers[0].input_layernorm(x), cache["normalized", 0, "ln1"])
    assert close(lm.unembed(cache["normalized"]), cache["logits"])
    ids = model.tokenizer.encode(PROMPT)
    assert close(lm.embed_tokens(ids), x) and close(lm(ids), cache["logits"])
    with pytest.raises(ValueError):
        lm.layers[0].self_attn(Tensor((3, 5)))


def test_patterns_on_every_path(model):
    lm = model.model
    seen = []
    hook = ("blocks.29.attn.hook_pattern", lambda t, h: seen.append((h.ctx["seq"], t.shape)))
    ids = model.tokenizer.encode(PROMPT)
    model.generate_ids(ids, max_new_tokens=3, fwd_hooks=[hook], stop_at_eos=False)
    T, H = len(ids), model.config.num_attention_heads
    assert seen == [(0, (H, T, T)), (0, (H, 1, T + 1)), (0, (H, 1, T + 2))]
