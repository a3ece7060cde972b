"""Comparisons against the golden outputs of HF transformers (fp32) on the default model's weights."""
from toolkit.core.engine import functional as F

LOGIT_TOL = 1e-2     # the acceptance bound on max |delta logit|
TIE_TOL = 1e-3       # top-10 entries closer than this may swap places


def check_top10(logits, prompt):
    """Per-position top-10 ids identical (near-ties may swap) and top-10 logits within LOGIT_TOL.

    Returns the largest |delta| seen."""
    values, indices = F.topk(logits, 10)
    vals, idx = values.tolist(), indices.tolist()
    worst = 0.0
    for row in prompt["per_position_top10"]:
        p = row["pos"]
        gold_ids, gold_vals = row["top10_ids"], row["top10_logits"]
        ours = dict(zip(idx[p], vals[p]))
        for rank, (gi, gv) in enumerate(zip(gold_ids, gold_vals)):
            if idx[p][rank] != gi:
                # a swap is allowed only between entries whose golden logits are within TIE_TOL
                assert abs(vals[p][rank] - gv) <= TIE_TOL + LOGIT_TOL, (prompt["name"], p, rank, idx[p], gold_ids)
                assert gi in ours, (prompt["name"], p, "golden top-10 id missing", gi, idx[p])
            worst = max(worst, abs(ours[gi] - gv) if gi in ours else float("inf"))
    return worst


def check_last_logits(logits, prompt):
    last = logits[logits.shape[0] - 1].to_list()
    gold = prompt["last_position_logits"]
    assert len(last) == len(gold)
    return max(abs(a - b) for a, b in zip(last, gold))
