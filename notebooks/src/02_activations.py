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

%matplotlib inline
from IPython.display import display

import toolkit
import toolkit.experiments as ex
from toolkit.notebook import plots            # figures from plain lists (matplotlib underneath)

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


norms = [[norm(R[c][p]) for p in range(len(ids))] for c in range(len(labels))]   # [layer][position]
fig = plots.residual_norms(norms, layer_names=labels, positions=tokens)
fig.axes[0].set_yscale("log")
display(fig)
for c in (0, len(labels) // 2, len(labels) - 1):
    print(f"{labels[c]:>10}: position 0 {norms[c][0]:8.1f}   others (mean) {sum(norms[c][1:]) / (len(ids) - 1):8.1f}")

# %% [markdown]
# ## The logit lens
# `cache.logit_lens(k)` puts every layer's residual stream through the final norm and the
# unembedding and keeps the top k tokens per position. In the figure each cell shows the top token
# if the model had to answer from that layer's residual stream, and its colour that token's
# probability.

# %%
lens = cache.logit_lens(k=5)          # lens.tokens / lens.probs: [component][position][rank]
display(plots.logit_lens_figure(lens, input_tokens=tokens))
print(lens.table(pos=-1, k=3))

# %% [markdown]
# Reading the grid row by row: at how many positions is the lens's top token the *input* token
# itself (an echo), and at how many is it already the model's final prediction for that position?
# With the default prompt, only `0_pre` echoes the input: the embeddings alone, read through the
# unembedding (the same matrix: SmolLM2 ties them). From layer 1 on, the lens returns frequent
# filler tokens (`,`, ` the`, ` and`, ` (`) that are neither the input nor the answer, for most of
# the network; agreement with the output starts around layer 20 and the answer at the last
# position is top-1 only in the last few layers.

# %%
T = len(ids)
echo = [sum(lens.ids[c][p][0] == ids[p] for p in range(T)) for c in range(len(lens.labels))]
agree = [sum(lens.ids[c][p][0] == lens.ids[-1][p][0] for p in range(T)) for c in range(len(lens.labels))]
print(f"{'component':>10}  top-1 = input token  top-1 = final prediction   (of {T} positions)")
for c, label in enumerate(lens.labels):
    print(f"{label:>10}  {echo[c]:>19}  {agree[c]:>24}")

# the layer from which the final answer stays the top-1 prediction at the last position
final = lens.ids[-1][-1][0]
first = min(c for c in range(len(lens.labels)) if all(lens.ids[d][-1][0] == final for d in range(c, len(lens.labels))))
print(f"\nfinal answer {m.tokenizer.decode([final])!r} is top-1 from {lens.labels[first]} on "
      f"(p = {lens.probs[first][-1][0]:.3f} there, {lens.probs[-1][-1][0]:.3f} at the output)")

# %%
manifest = ex.record(out_dir, m, seed=seed, extra={
    "prompt": prompt, "answer": m.tokenizer.decode([answer]), "answer_first_layer": lens.labels[first],
    "lens_echo_by_layer": echo, "lens_agrees_with_output_by_layer": agree,
    "resid_norm_last_pos": [round(row[-1], 3) for row in norms]})
print("wrote", manifest["_path"])
