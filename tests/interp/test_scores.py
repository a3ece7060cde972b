"""induction_scores against the same score read off the cached patterns element by element."""
import random

import pytest

from toolkit import errors
from toolkit.interp import induction_scores


def naive(m, seqs, period, start):
    c = m.config
    out = [[0.0] * c.num_attention_heads for _ in range(c.num_hidden_layers)]
    for ids in seqs:
        _, cache = m.run_with_cache(ids, names_filter="*attn.hook_pattern")
        for layer in range(c.num_hidden_layers):
            P = cache[f"blocks.{layer}.attn.hook_pattern"].tolist()
            for h in range(c.num_attention_heads):
                s = [P[h][i][i - period + 1] for i in range(start + period, start + 2 * period)]
                out[layer][h] += sum(s) / len(s) / len(seqs)
    return out


def test_induction_scores_match_the_patterns(model):
    rng = random.Random(0)
    seqs = []
    for n in (6, 6):
        half = [rng.randrange(1000, 20000) for _ in range(n)]
        seqs.append([1] + half + half)
    got = induction_scores(model, seqs, period=6, start=1)
    want = naive(model, seqs, 6, 1)
    for g, w in zip(got, want):
        assert g == pytest.approx(w, rel=1e-5, abs=1e-7)
    assert max(max(r) for r in got) > 0.3  # some head of the model does induct


@pytest.mark.parametrize("args, words", [
    (dict(sequences=[[5] * 7], period=4), "cannot hold"),
    (dict(sequences=[], period=4), "at least one"),
    (dict(sequences=[[5] * 9], period=1), "period"),
    (dict(sequences=[[5] * 9], period=4, start=-1), "start"),
])
def test_induction_scores_bad_arguments(model, args, words):
    with pytest.raises(errors.InvalidArgumentError, match=words):
        induction_scores(model, **args)
