"""run_with_cache against the Hugging Face fp32 reference (tests/data/golden/hidden.json), the
cache's lookups, the residual stack and the logit lens."""
import math
import sys

import pytest

from toolkit import errors
from toolkit.core.engine import functional as F
from toolkit.interp import CacheKeyError

from interp_common import PROMPT


def _norms(t):
    return [math.sqrt(sum(v * v for v in row)) for row in t.tolist()]


def test_cache_matches_golden(model, golden_hidden):
    L = model.config.num_hidden_layers
    logits, cache = model.run_with_cache(golden_hidden["input_ids"],
                                         names_filter=lambda n: "resid" in n or n.endswith(("pattern", "normalized")))
    gold = golden_hidden["hidden_state_l2_norms"]
    resid = cache.accumulated_resid()                                  # embed, resid_pre 1..29, final_post
    assert resid.shape == (L + 1, len(golden_hidden["input_ids"]), 576)
    for k in range(L):                                                 # golden k: after layer k - 1
        assert _norms(resid[k]) == pytest.approx(gold[k], rel=1e-4), k
    assert _norms(cache["resid_post", -1]) == pytest.approx(golden_hidden["last_layer_raw_output_l2_norms"], rel=1e-4)
    assert _norms(cache["normalized"]) == pytest.approx(gold[L], rel=1e-4)
    for layer in ("0", "29"):
        ours = cache["pattern", int(layer)].tolist()
        want = golden_hidden["attention_probs"][layer]
        for h in range(len(want)):
            for q in range(len(want[h])):
                assert ours[h][q] == pytest.approx(want[h][q], abs=1e-4), (layer, h, q)
    top = golden_hidden["last_position_top10"]["ids"]
    lens = cache.logit_lens(k=10)
    assert lens.labels[0] == "0_pre" and lens.labels[-1] == "final_post"
    assert len(lens.ids) == L + 1 and len(lens.ids[-1]) == len(golden_hidden["input_ids"])
    assert lens.ids[-1][-1][:3] == top[:3]                              # the final layer's lens is the model's output
    assert lens.probs[-1][-1] == sorted(lens.probs[-1][-1], reverse=True)
    row = F.softmax(logits[logits.shape[0] - 1]).to_list()
    assert lens.probs[-1][-1][0] == pytest.approx(row[top[0]], rel=1e-4)
    assert "final_post" in lens.table() and isinstance(lens.tokens[-1][-1][0], str)


def test_only_requested_names_are_cached(model):
    logits, cache = model.run_with_cache(PROMPT, names_filter="blocks.*.hook_resid_post")
    assert cache.keys() == [f"blocks.{i}.hook_resid_post" for i in range(30)]
    assert logits.to_list() == model.logits(PROMPT).to_list()
    T = logits.shape[0]
    assert cache.nbytes == 30 * T * 576 * 4
    assert cache["resid_post", -1].to_list() == cache["blocks.29.hook_resid_post"].to_list()
    assert ("resid_post", 3) in cache and ("resid_pre", 3) not in cache
    with pytest.raises(CacheKeyError, match="not cached"):
        cache["resid_pre", 3]
    with pytest.raises(CacheKeyError, match="accumulated_resid needs"):
        cache.accumulated_resid()
    with pytest.raises(IndexError):
        cache["resid_post", 30]
    with pytest.raises(KeyError, match="ln1"):                          # ambiguous without the sublayer
        model.run_with_cache(PROMPT, names_filter="blocks.0.*")[1]["scale", 0]


def test_shorthand_names(model):
    _, cache = model.run_with_cache(PROMPT, names_filter=lambda n: n.startswith(("blocks.29.", "hook_", "ln_final")))
    assert cache["pattern", -1] is cache["blocks.29.attn.hook_pattern"]
    assert cache["attn", 29] is cache["blocks.29.attn.hook_pattern"]  # TransformerLens's alias
    assert cache["q", 29] is cache["blocks.29.attn.hook_q"]
    assert cache["scale", -1, "ln2"] is cache["blocks.29.ln2.hook_scale"]
    assert cache["embed"] is cache["hook_embed"] and cache["logits"] is cache["hook_logits"]
    assert cache["normalized"] is cache["ln_final.hook_normalized"]


def test_cache_tensors_convert_without_a_copy(model):
    _, cache = model.run_with_cache(PROMPT, names_filter="blocks.0.hook_resid_post")
    t = cache["resid_post", 0]
    mv = memoryview(t) if sys.version_info >= (3, 12) else t.memoryview()
    assert mv.shape == t.shape and mv.format == "f"
    assert mv[0, 0] == t.tolist()[0][0]
    np = pytest.importorskip("numpy")
    a = np.asarray(t)
    assert a.shape == t.shape and a.ctypes.data == t.data_ptr()
    assert a[2, 5] == pytest.approx(t.tolist()[2][5])
    _, cache = model.run_with_cache(PROMPT, names_filter="blocks.1.attn.hook_pattern")
    p = np.asarray(cache["pattern", 1])
    assert np.allclose(p.sum(-1), 1.0, atol=1e-5)


def test_hook_nbytes_is_what_the_cache_holds(model):
    ids = model.tokenizer.encode(PROMPT)
    _, cache = model.run_with_cache(ids)
    assert model.model.hook_nbytes(cache.keys(), len(ids)) == cache.nbytes


def test_a_cache_larger_than_memory_fails_up_front(model, monkeypatch):
    """Every hook point of a few thousand tokens is tens of GB (attention patterns grow with T^2):
    an OutOfMemoryError that names the size and the way out, not the kernel's OOM killer."""
    from toolkit.common import validate

    ids = model.tokenizer.encode(PROMPT) * 8
    need = model.model.hook_nbytes(model.hook_names(), len(ids))
    monkeypatch.setattr(validate, "available_memory", lambda: need // 2)
    with pytest.raises(errors.OutOfMemoryError, match="names_filter"):
        model.run_with_cache(ids)
    _, cache = model.run_with_cache(ids, names_filter="blocks.*.hook_resid_post")  # a narrow cache still fits
    assert len(cache) == model.config.num_hidden_layers


def test_transformer_lens_aliases(model):
    """TransformerLens's shorthands name the same activations here; 'result' (each head's output in
    d_model, [pos, head, d_model]) is not z ([pos, head, d_head]) and must not silently return it."""
    _, cache = model.run_with_cache(PROMPT, names_filter="blocks.1.*")
    assert cache["key", 1] is cache["k", 1] and cache["query", 1] is cache["q", 1] and cache["value", 1] is cache["v", 1]
    assert cache["attn", 1] is cache["pattern", 1] and cache["attn_logits", 1] is cache["attn_scores", 1]
    assert cache["mlp_pre", 1] is cache["pre", 1] and cache["mlp_post", 1] is cache["post", 1]
    with pytest.raises(CacheKeyError, match="hook_z"):
        cache["result", 1]
