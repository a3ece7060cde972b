# %% [markdown]
# # 03 · Induction heads, measured
#
# An *induction head* (Olsson et al., 2022) completes patterns: having seen `… A B … A`, it attends
# from the second `A` to the token *after* the first `A` (that is `B`) and copies it. Such heads
# show up in almost every trained transformer, so they make a good first real finding: we do not
# assume which heads they are in SmolLM2, we measure it.
#
# **Method.** Feed sequences of random tokens repeated twice (`BOS r1 … rN r1 … rN`). In the second
# half the next token is fully predictable, but only by looking back. For every head, the
# *induction score* is its mean attention from each position `i` of the second half to position
# `i − N + 1` (the token after the previous occurrence of the current token).

# %% tags=["parameters"]
model_name = "smollm2-135m-instruct"
threads = 2
seed = 0
seq_len = 40          # N random tokens, then the same N again
n_seqs = 4            # scores are averaged over this many random sequences
top_n = 10
out_dir = "results/03_induction_heads"

# %%
import json
import math
import os
import random
import statistics

import matplotlib.pyplot as plt

import toolkit
import toolkit.experiments as ex
from toolkit.interp import induction_scores
from toolkit.core.engine import functional as F

m = toolkit.load(model_name, threads=threads)
cfg = m.config
L, H = cfg.num_hidden_layers, cfg.num_attention_heads
rng = random.Random(seed)
bos = [m.tokenizer.bos_id] if m.tokenizer.bos_id is not None else []


def repeated_random_tokens():
    # ordinary vocabulary ids (the first ids of this vocabulary are special and byte tokens)
    half = [rng.randrange(1000, 20000) for _ in range(seq_len)]
    return bos + half + half


seqs = [repeated_random_tokens() for _ in range(n_seqs)]
print(n_seqs, "sequences of", len(seqs[0]), "tokens; the first one starts:")
print(repr(m.tokenizer.decode(seqs[0][:12])), "...")

# %% [markdown]
# ## Sanity check: the model does use the repetition
# Per-token loss on the first (random, unpredictable) half against the second (repeated) half. A
# large drop means some mechanism looks back and copies: the induction heads we are after.

# %%
def token_losses(logits, ids):
    """Cross-entropy of each next token: -log softmax(logits[i])[ids[i + 1]]."""
    p = F.softmax(logits)                                           # [T, vocab], on the engine
    return [-math.log(max(p[i][ids[i + 1]], 1e-30)) for i in range(len(ids) - 1)]


off = len(bos)
first_half, second_half = [], []
for ids in seqs:
    losses = token_losses(m.logits(ids), ids)
    first_half += losses[off:off + seq_len - 1]                      # predicting r2..rN
    second_half += losses[off + seq_len:]                            # predicting the repeat's r2..rN
print(f"mean loss, first half  {statistics.mean(first_half):.2f} nats")
print(f"mean loss, second half {statistics.mean(second_half):.2f} nats  (repeated: predictable by copying)")

# %% [markdown]
# ## Induction score of every head
# `toolkit.interp.induction_scores`: one pass per sequence, caching only the attention patterns
# (`[heads, query, key]` per layer); each head's mean attention from a repeated token to the token
# after its first occurrence.

# %%
scores = induction_scores(m, seqs, period=seq_len, start=off)   # [layer][head], on the engine

flat = sorted(((scores[l][h], l, h) for l in range(L) for h in range(H)), reverse=True)
median = statistics.median(s for s, _, _ in flat)
print(f"median head score {median:.4f}   (uniform attention over the past would give ~{1 / (1.5 * seq_len):.4f})")
print(f"top {top_n} heads (layer.head):")
for s, l, h in flat[:top_n]:
    print(f"  L{l:>2}.H{h}  score {s:.3f}   ({s / median:.0f}x the median)")

# %%
fig, ax = plt.subplots(figsize=(5, 8))
im = ax.imshow(scores, aspect="auto", cmap="viridis")
ax.set_xlabel("head")
ax.set_ylabel("layer")
ax.set_xticks(range(H))
ax.set_title("Induction score per layer × head")
fig.colorbar(im, ax=ax, fraction=0.05)
for s, l, h in flat[:3]:
    ax.text(h, l, f"{s:.2f}", ha="center", va="center", color="red", fontsize=7)
plt.show()

# %% [markdown]
# ## Their attention patterns
# An induction head draws a stripe `seq_len − 1` positions below the diagonal in the second half:
# each token attends to the one after its earlier copy. (Most heads also park attention on
# position 0, the usual "attention sink".)

# %%
ids = seqs[0]
top3 = [(l, h) for _, l, h in flat[:3]]
_, cache = m.run_with_cache(ids, names_filter=[f"blocks.{l}.attn.hook_pattern" for l in sorted({l for l, _ in top3})])
fig, axes = plt.subplots(1, 3, figsize=(13, 4.3))
for ax, (l, h) in zip(axes, top3):
    P = cache[f"blocks.{l}.attn.hook_pattern"].tolist()[h]
    ax.imshow(P, cmap="magma", vmin=0, vmax=1)
    ax.set_title(f"L{l}.H{h}  (score {scores[l][h]:.2f})")
    ax.set_xlabel("key position")
    ax.set_ylabel("query position")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Results and manifest
# The scores go to `induction_scores.json` (notebook 04 ablates these heads); the manifest records
# the setup and the headline numbers so the run can be checked later.

# %%
os.makedirs(out_dir, exist_ok=True)
with open(os.path.join(out_dir, "induction_scores.json"), "w") as f:
    json.dump({"seq_len": seq_len, "n_seqs": n_seqs, "seed": seed, "scores": scores,
               "top": [[l, h, s] for s, l, h in flat[:top_n]]}, f, indent=1)
manifest = ex.record(out_dir, m, seed=seed, extra={
    "seq_len": seq_len, "n_seqs": n_seqs, "median_score": median,
    "top_heads": [[l, h, round(s, 4)] for s, l, h in flat[:top_n]], "top_score": flat[0][0],
    "loss_first_half": statistics.mean(first_half), "loss_second_half": statistics.mean(second_half)})
print("wrote", manifest["_path"])
