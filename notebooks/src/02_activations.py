# %% [markdown]
# # 02 · Activations: the cache, residual norms, the logit lens
#
# Every intermediate tensor of a forward pass has a TransformerLens-style name (`hook_embed`,
# `blocks.3.hook_resid_post`, `blocks.3.attn.hook_pattern`, ...; see `docs/hooks.md`).
# `run_with_cache` runs the model once and keeps the ones you ask for. This notebook reads the
# residual stream layer by layer and decodes it with the *logit lens* (each layer's residual put
# through the final norm and the unembedding), to watch the answer form.

# %% tags=["parameters"]
model_name = "smollm2-135m-instruct"
threads = 2
seed = 0
prompt = "The Eiffel Tower is located in the city of"
out_dir = "results/02_activations"

# %%
import math

import matplotlib.pyplot as plt

import toolkit
import toolkit.experiments as ex

m = toolkit.load(model_name, threads=threads)
names = m.hook_names()
print(len(names), "hook points; layer 0 has:")
for n in names:
    if n.startswith("blocks.0."):
        print("  ", n)

# %% [markdown]
# ## One pass, everything kept
# `names_filter` takes a name, a glob, a list or a predicate. Here: the residual stream at every
# layer plus the attention patterns. The cache is indexed by full name or by TransformerLens's
# short form `cache["resid_post", layer]`.

# %%
ids = m.tokenizer.encode(prompt)
tokens = [m.tokenizer.decode([i]) for i in ids]
logits, cache = m.run_with_cache(ids, names_filter=lambda n: "resid" in n or n.endswith("hook_pattern"))
print(cache)
print("logits", logits.shape, "| resid_post of layer 3:", cache["resid_post", 3].shape,
      "| pattern of layer 3:", cache["blocks.3.attn.hook_pattern"].shape, "(heads, query, key)")
last = logits.tolist()[-1]
answer = max(range(len(last)), key=last.__getitem__)
print("prediction after", repr(prompt), "->", repr(m.tokenizer.decode([answer])))

# %% [markdown]
# ## Residual-stream norm by layer
# The residual stream grows as layers write into it. Its norm per layer is a first health check of
# any model (a sudden jump often marks a layer that writes a large constant direction, e.g. an
# attention sink on the first token).

# %%
resid, labels = cache.accumulated_resid(return_labels=True)        # [layers + 1, pos, d_model]
R = resid.tolist()


def norm(v):
    return math.sqrt(sum(x * x for x in v))


norms = [[norm(R[c][p]) for p in range(len(ids))] for c in range(len(labels))]
fig, ax = plt.subplots(figsize=(8, 3.5))
ax.plot(range(len(labels)), [row[0] for row in norms], label=f"position 0 ({tokens[0]!r})")
ax.plot(range(len(labels)), [sum(row[1:]) / (len(ids) - 1) for row in norms], label="mean of the other positions")
ax.set_xticks(range(0, len(labels), 3), [labels[i] for i in range(0, len(labels), 3)], rotation=45)
ax.set_yscale("log")
ax.set_ylabel("‖resid‖")
ax.set_title("Residual-stream norm by layer")
ax.legend()
plt.show()
for c in (0, len(labels) // 2, len(labels) - 1):
    print(f"{labels[c]:>10}: position 0 {norms[c][0]:8.1f}   others (mean) {sum(norms[c][1:]) / (len(ids) - 1):8.1f}")

# %% [markdown]
# ## The logit lens
# Each cell shows the top token if the model had to answer from that layer's residual stream, and
# its colour that token's probability. Early layers mostly echo the input; the answer appears only
# in the last third of the network.

# %%
lens = cache.logit_lens(k=5)
probs = [[lens.probs[c][p][0] for p in range(len(ids))] for c in range(len(lens.labels))]
fig, ax = plt.subplots(figsize=(1.0 * len(ids) + 2, 0.32 * len(lens.labels) + 1.5))
im = ax.imshow(probs, aspect="auto", cmap="Blues", vmin=0, vmax=1)
for c in range(len(lens.labels)):
    for p in range(len(ids)):
        ax.text(p, c, lens.tokens[c][p][0].strip()[:8], ha="center", va="center", fontsize=6,
                color="white" if probs[c][p] > 0.5 else "black")
ax.set_xticks(range(len(ids)), [t.strip() for t in tokens], rotation=45, ha="right")
ax.set_yticks(range(len(lens.labels)), lens.labels, fontsize=6)
ax.set_title("Logit lens: top-1 token and its probability, by layer and position")
fig.colorbar(im, ax=ax, fraction=0.03)
plt.tight_layout()
plt.show()
print(lens.table(pos=-1, k=3))

# %% [markdown]
# Where does the final answer first become the top-1 prediction at the last position?

# %%
final = lens.ids[-1][-1][0]
first = next(c for c in range(len(lens.labels)) if lens.ids[c][-1][0] == final)
print(f"final answer {m.tokenizer.decode([final])!r} is top-1 from {lens.labels[first]} on "
      f"(p = {lens.probs[first][-1][0]:.3f} there, {lens.probs[-1][-1][0]:.3f} at the output)")

# %%
manifest = ex.record(out_dir, m, seed=seed, extra={
    "prompt": prompt, "answer": m.tokenizer.decode([answer]), "answer_first_layer": lens.labels[first],
    "resid_norm_last_pos": [round(row[-1], 3) for row in norms]})
print("wrote", manifest["_path"])
