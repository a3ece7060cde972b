# %% [markdown]
# # 04 · Interventions: ablation, steering, activation patching
#
# Notebook 03 *observed* induction heads. Here we *intervene* to test claims causally, with forward
# hooks: a hook `fn(tensor, hook)` runs when the pass reaches its hook point and may edit the tensor
# in place (or return a replacement), and the rest of the pass computes from the edited values.
#
# 1. **Ablation**: zero the top induction heads' outputs and measure the loss on the repeated half
#    of random-token sequences; compare with zeroing as many *random* heads.
# 2. **Steering**: add a "love minus hate" direction to the residual stream and watch the generated
#    text change.
# 3. **Activation patching**: copy the residual stream of a clean prompt into a corrupted run, one
#    (layer, position) at a time, to locate where the answer is carried.

# %% tags=["parameters"]
model_name = "smollm2-135m-instruct"
threads = 2
seed = 0
seq_len = 40              # random tokens, repeated once (as in notebook 03)
n_seqs = 3
k_heads = 5               # how many top induction heads to ablate
n_random_draws = 5        # random head sets of the same size, for comparison
steer_layer = 3
steer_coeff = 2.0
patch_layer_step = 3      # patch every 3rd layer (every layer: 1; slower)
out_dir = "results/04_interventions"

# %%
import math
import random
import statistics

import matplotlib.pyplot as plt

import toolkit
import toolkit.experiments as ex
from toolkit.core.engine import functional as F
from toolkit.core.engine.backend import Tensor
from toolkit.interp import activation_patching, induction_scores, steering_hooks

m = toolkit.load(model_name, threads=threads)
L, H, D = m.config.num_hidden_layers, m.config.num_attention_heads, m.config.head_dim
rng = random.Random(seed)
bos = [m.tokenizer.bos_id] if m.tokenizer.bos_id is not None else []
off = len(bos)
seqs = []
for _ in range(n_seqs):
    half = [rng.randrange(1000, 20000) for _ in range(seq_len)]
    seqs.append(bos + half + half)

# %% [markdown]
# ## 1 · Ablating induction heads
# First find the heads again (the same measurement as notebook 03, condensed).

# %%
scores = induction_scores(m, seqs, period=seq_len, start=off)   # [layer][head], on the engine
ranked = sorted(((scores[l][h], l, h) for l in range(L) for h in range(H)), reverse=True)
top_heads = [(l, h) for _, l, h in ranked[:k_heads]]
print("top induction heads:", ", ".join(f"L{l}.H{h} ({scores[l][h]:.2f})" for l, h in top_heads))

# %% [markdown]
# A head's output is its slice of `blocks.{l}.attn.hook_z` (`[pos, head, head_dim]`, before the
# output projection). Zeroing that slice removes exactly that head's contribution.

# %%
def zero_heads_hooks(heads):
    """fwd_hooks that zero the output (hook_z) of each (layer, head)."""
    by_layer = {}
    for l, h in heads:
        by_layer.setdefault(l, []).append(h)

    def make(hs):
        def hook(z, hook):                                               # z [pos, heads, head_dim]
            zeros = Tensor((z.shape[0], z.shape[2]))
            for h in hs:
                z.permute(1, 0, 2)[h].copy_(zeros)                      # a strided view: head h's rows
            return z
        return hook

    return [(f"blocks.{l}.attn.hook_z", make(hs)) for l, hs in by_layer.items()]


def repeated_half_loss(fwd_hooks=()):
    """Mean next-token loss over the repeated half of every sequence."""
    losses = []
    for ids in seqs:
        logits = m.run_with_hooks(ids, fwd_hooks=list(fwd_hooks))
        p = F.softmax(logits)                                           # [T, vocab]
        losses += [-math.log(max(p[i][ids[i + 1]], 1e-30)) for i in range(off + seq_len, len(ids) - 1)]
    return statistics.mean(losses)


base = repeated_half_loss()
top_loss = repeated_half_loss(zero_heads_hooks(top_heads))
others = [(l, h) for l in range(L) for h in range(H) if (l, h) not in top_heads]
random_losses, random_sets = [], []
for _ in range(n_random_draws):
    heads = rng.sample(others, k_heads)
    random_sets.append(heads)
    random_losses.append(repeated_half_loss(zero_heads_hooks(heads)))
print(f"loss on the repeated half, no ablation        {base:.3f}")
print(f"  zeroing the top {k_heads} induction heads      {top_loss:.3f}  (+{top_loss - base:.3f})")
print(f"  zeroing {k_heads} random heads (mean of {n_random_draws})   {statistics.mean(random_losses):.3f}  "
      f"(+{statistics.mean(random_losses) - base:.3f}; max +{max(random_losses) - base:.3f})")
worst = random_sets[random_losses.index(max(random_losses))]
print("the most harmful random set:", ", ".join(f"L{l}.H{h} (score {scores[l][h]:.2f})" for l, h in worst))

# %% [markdown]
# Random sets vary a lot, and one of them can hurt almost as much as the induction heads. The
# textbook suspect: induction heads need an upstream *previous-token head* (one that attends from
# each token to the one just before it, and copies it over) to find "the token after the earlier
# copy", so a random set that hits one should break induction too. We test that instead of assuming
# it: split the most harmful random set head by head (ablating each alone), and score every head's
# attention from position `i` to `i − 1` on the same sequences (its *previous-token score*, the
# mean over positions, like notebook 03's induction score).

# %%
def prev_token_scores():
    """[layer][head]: mean attention from each position to the one before it (BOS excluded)."""
    out = [[0.0] * H for _ in range(L)]
    for ids in seqs:
        _, cache = m.run_with_cache(ids, names_filter=lambda n: n.endswith("attn.hook_pattern"))
        T = len(ids)
        for l in range(L):
            P = cache[f"blocks.{l}.attn.hook_pattern"].tolist()             # [head][query][key]
            for h in range(H):
                out[l][h] += sum(P[h][i][i - 1] for i in range(off + 1, T)) / (T - off - 1) / len(seqs)
    return out


prev = prev_token_scores()
prev_rank = sorted(((prev[l][h], l, h) for l in range(L) for h in range(H)), reverse=True)
prev_median = statistics.median(s for s, _, _ in prev_rank)
print("strongest previous-token heads:", ", ".join(f"L{l}.H{h} ({s:.2f})" for s, l, h in prev_rank[:5]),
      f"| median head {prev_median:.3f}")
alone = {(l, h): repeated_half_loss(zero_heads_hooks([(l, h)])) - base for l, h in worst}
print(f"the most harmful random set (+{max(random_losses) - base:.2f} together), one head at a time:")
for (l, h), d in sorted(alone.items(), key=lambda kv: -kv[1]):
    rank = [(ll, hh) for _, ll, hh in prev_rank].index((l, h)) + 1
    print(f"  L{l}.H{h}: {d:+.2f} alone   previous-token score {prev[l][h]:.2f} (rank {rank} of {L * H})")
culprit = max(alone, key=alone.get)
is_prev_head = prev[culprit[0]][culprit[1]] >= prev_rank[9][0]       # among the 10 strongest
print(f"L{culprit[0]}.H{culprit[1]} does {100 * alone[culprit] / (max(random_losses) - base):.0f}% of the set's damage alone; "
      + ("it is one of the strongest previous-token heads: the explanation holds" if is_prev_head else
         "it is not a strong previous-token head: the explanation does not hold for it"))

# %% [markdown]
# With the default settings one early head, L1.H4, does nearly all of the damage on its own, and its
# previous-token score is low (about 0.09, where the five strongest previous-token heads score
# 0.7–0.9): the textbook explanation does not fit it. (With `seed = 1` the random draws differ and
# the same pattern appears: another layer-1 head, L1.H5, does all of the worst set's damage, with a
# previous-token score of 0.11.) These layer-1 heads matter to the repeated half in some other way, a
# question for another experiment (their patterns, and patching them, would be where to start).

# %%
fig, ax = plt.subplots(figsize=(6, 3))
ax.bar(["none", f"top {k_heads}\ninduction"], [base, top_loss], color=["grey", "C3"])
ax.bar([f"{k_heads} random\n(draw {i + 1})" for i in range(n_random_draws)], random_losses, color="C0")
ax.set_ylabel("loss on repeated half (nats)")
ax.set_title("Zero-ablation of attention heads")
plt.xticks(fontsize=7)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 2 · A steering vector
# The difference between the residual streams of two contrasting prompts at one layer is a direction;
# adding it (times a coefficient) at that layer during generation shifts what the model writes
# (Turner et al., "Activation Addition", 2023). Position 0 is left alone: its residual stream is
# the attention sink, an order of magnitude larger than the rest.

# %%
def resid_at(prompt, layer):
    _, cache = m.run_with_cache(prompt, names_filter=f"blocks.{layer}.hook_resid_pre")
    return cache[f"blocks.{layer}.hook_resid_pre"].tolist()[-1]     # last position [d_model]


love, hate = resid_at("I love weddings", steer_layer), resid_at("I hate weddings", steer_layer)
direction = [a - b for a, b in zip(love, hate)]
print(f"|love - hate| = {math.sqrt(sum(x * x for x in direction)):.1f}, |resid| = {math.sqrt(sum(x * x for x in love)):.1f}")


# toolkit.interp.steering_hooks builds the hook: it adds scale * vector to the rows of the residual
# stream at absolute positions >= from_pos, in the prefill and in every decode step.
steer = steering_hooks(m, steer_layer, direction, from_pos=1, scale=steer_coeff)


prompt = "I went to my friend's wedding and I thought it was"
plain = m.generate(prompt, max_new_tokens=30)
steered = m.generate(prompt, max_new_tokens=30, fwd_hooks=steer)
print("prompt :", prompt)
print("plain  :", repr(plain))
print("steered:", repr(steered))

# %% [markdown]
# A measurement rather than an impression: how much more likely is a positive next word than a
# negative one, with and without the vector?

# %%
ids = m.tokenizer.encode(prompt)
good = [m.tokenizer.encode(w)[0] for w in (" great", " wonderful", " beautiful", " amazing")]
bad = [m.tokenizer.encode(w)[0] for w in (" terrible", " awful", " boring", " disaster")]


def sentiment_logit_gap(fwd_hooks=()):
    last = m.run_with_hooks(ids, fwd_hooks=list(fwd_hooks))[-1]
    return statistics.mean(last[i] for i in good) - statistics.mean(last[i] for i in bad)


gap_plain = sentiment_logit_gap()
gap_steered = sentiment_logit_gap(steer)
print(f"mean logit(positive words) - mean logit(negative words): plain {gap_plain:+.2f}, steered {gap_steered:+.2f}")

# %% [markdown]
# ## 3 · Activation patching
# Clean prompt: *The Eiffel Tower is in the city of* → " Paris". Corrupted: *The Colosseum is in the
# city of* → " Rome" (same number of tokens). We run the corrupted prompt, but overwrite the residual
# stream at one (layer, position) with its value from the clean run, and measure how much of the
# clean answer comes back:
#
#     score = (logit_diff(patched) − logit_diff(corrupted)) / (logit_diff(clean) − logit_diff(corrupted)),
#     logit_diff = logit(" Paris") − logit(" Rome")
#
# 1 means that single activation carries everything the answer needs; 0 means nothing.

# %%
clean, corrupt = "The Eiffel Tower is in the city of", "The Colosseum is in the city of"
c_ids, x_ids = m.tokenizer.encode(clean), m.tokenizer.encode(corrupt)
assert len(c_ids) == len(x_ids), "patching needs prompts of equal token length"
paris, rome = m.tokenizer.encode(" Paris")[0], m.tokenizer.encode(" Rome")[0]


def logit_diff(logits):
    last = logits[-1]                                                    # a view of the last row
    return last[paris] - last[rome]


clean_logits, clean_cache = m.run_with_cache(c_ids, names_filter="blocks.*.hook_resid_pre")
d_clean, d_corrupt = logit_diff(clean_logits), logit_diff(m.run_with_hooks(x_ids, fwd_hooks=[]))
print(f"logit diff Paris - Rome: clean {d_clean:+.2f}, corrupted {d_corrupt:+.2f}")

# One patch by hand, to see the mechanism: the hook overwrites one row of the corrupted run's
# residual stream with the clean run's row, and the rest of the pass computes from it.
layers = list(range(0, L, patch_layer_step))
hand_layer, hand_pos = layers[1], 2


def patch(resid, hook):                                                  # [pos, d_model]
    resid[hand_pos].copy_(clean_cache[f"blocks.{hand_layer}.hook_resid_pre"][hand_pos])


d_hand = logit_diff(m.run_with_hooks(x_ids, fwd_hooks=[(f"blocks.{hand_layer}.hook_resid_pre", patch)]))
print(f"patching resid_pre {hand_layer} at position {hand_pos} ({m.tokenizer.decode([c_ids[hand_pos]])!r}): "
      f"logit diff {d_hand:+.2f}")

# %% [markdown]
# `toolkit.interp.activation_patching` runs that loop over every (layer, position), reading only the
# last position's logits. Its effects are `metric(patched) - metric(corrupted)`; dividing by
# `metric(clean) - metric(corrupted)` gives the fraction restored.

# %%
res = activation_patching(m, c_ids, x_ids, hook="resid_pre", answer=paris, wrong=rome, layers=layers)
print(res)
heat = [[e / (d_clean - d_corrupt) for e in row] for row in res.effects]
assert abs(res.effects[1][hand_pos] - (d_hand - d_corrupt)) < 1e-3, "the library's loop agrees with the hand patch"

fig, ax = plt.subplots(figsize=(7, 6))
im = ax.imshow(heat, aspect="auto", cmap="RdBu", vmin=-1, vmax=1)
ax.set_xticks(range(len(x_ids)), [f"{m.tokenizer.decode([a])}/{m.tokenizer.decode([b])}".replace(" ", "")
                                  for a, b in zip(c_ids, x_ids)], rotation=45, ha="right")
ax.set_yticks(range(len(layers)), [f"resid_pre {l}" for l in layers], fontsize=7)
ax.set_title("Patching clean → corrupted: fraction of the Paris−Rome logit diff restored")
fig.colorbar(im, ax=ax, fraction=0.04)
plt.tight_layout()
plt.show()
best = max(((heat[i][p], layers[i], p) for i in range(len(layers)) for p in range(len(x_ids))))
print(f"largest single-site restoration: {best[0]:.2f} at resid_pre {best[1]}, position {best[2]}")
moved = next((layers[i] for i in range(len(layers)) if heat[i][-1] > 0.5), None)
print("patching the last position alone restores most of the answer from resid_pre", moved, "on:",
      "the subject's information has been moved there by then" if moved is not None else "never, at these layers")

# %%
manifest = ex.record(out_dir, m, seed=seed, extra={
    "top_heads": top_heads, "loss_base": base, "loss_top_ablated": top_loss,
    "loss_random_ablated": random_losses, "loss_increase_top": top_loss - base,
    "loss_increase_random_mean": statistics.mean(random_losses) - base,
    "worst_random_set": {f"L{l}.H{h}": {"loss_increase_alone": alone[(l, h)], "prev_token_score": prev[l][h]}
                         for l, h in worst},
    "worst_random_culprit_is_prev_token_head": is_prev_head,
    "prev_token_top": [[l, h, round(s, 4)] for s, l, h in prev_rank[:10]],
    "steering": {"layer": steer_layer, "coeff": steer_coeff, "plain": plain, "steered": steered,
                 "gap_plain": gap_plain, "gap_steered": gap_steered},
    "patching": {"layers": layers, "scores": heat, "clean_diff": d_clean, "corrupt_diff": d_corrupt,
                 "last_position_from_layer": moved}})
print("wrote", manifest["_path"])
