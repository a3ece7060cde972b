# %% [markdown]
# # 01 · Quickstart: load, generate, chat, stream
#
# This notebook runs SmolLM2-135M-Instruct (4-bit, ~90 MB) on the toolkit's own C engine, on your
# CPU. It covers the handful of calls most work needs: `toolkit.load`, `generate`, the chat
# template, streaming, and recording an experiment manifest so the results can be checked later.
#
# Every notebook in this folder starts with a **parameters** cell (tagged `parameters`), so
# papermill can re-run it with other settings:
#
#     papermill 01_quickstart.ipynb out.ipynb -p seed 1 -p threads 4

# %% tags=["parameters"]
model_name = "smollm2-135m-instruct"   # the built-in default; or a .gguf file / HF model directory
threads = 2                            # engine worker threads (results do not depend on it)
seed = 0
max_new_tokens = 40
out_dir = "results/01_quickstart"      # where this notebook's manifest goes

# %%
import time

import toolkit
import toolkit.experiments as ex

t0 = time.perf_counter()
m = toolkit.load(model_name, threads=threads)
print(f"loaded in {time.perf_counter() - t0:.1f} s:", m)

# %% [markdown]
# ## Generate
# `generate` returns only the new text. Temperature 0 (the default) is greedy decoding, so the output
# is the same on every run and on any thread count.

# %%
prompt = "The three primary colours are"
greedy = m.generate(prompt, max_new_tokens=max_new_tokens)
print(prompt + greedy)

# %% [markdown]
# Sampling takes the usual settings (`temperature`, `top_k`, `top_p`, `min_p`, `repetition_penalty`,
# `stop`). With a `seed` the draw is reproducible: the same seed gives the same text.

# %%
sampling = dict(temperature=0.8, top_p=0.95, repetition_penalty=1.1)
a = m.generate(prompt, max_new_tokens=max_new_tokens, seed=seed, **sampling)
b = m.generate(prompt, max_new_tokens=max_new_tokens, seed=seed, **sampling)
c = m.generate(prompt, max_new_tokens=max_new_tokens, seed=seed + 1, **sampling)
print("seed", seed, "  :", repr(a))
print("seed", seed, "  :", repr(b))
print("seed", seed + 1, "  :", repr(c))
assert a == b, "same seed, same text"

# %% [markdown]
# ## Chat
# Instruct models expect their chat template. `apply_chat_template` renders a list of messages into
# the prompt string the model was trained on; generation stops at the end-of-turn token.

# %%
messages = [{"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": "Name two planets of the solar system."}]
chat_prompt = m.apply_chat_template(messages, add_generation_prompt=True)
print(chat_prompt)
reply = m.generate(chat_prompt, max_new_tokens=max_new_tokens)
print("assistant:", reply)

# %% [markdown]
# ## Streaming
# `stream` yields text pieces as they are decoded (never half a UTF-8 character), so you can print
# tokens as they arrive.

# %%
pieces = []
t0 = time.perf_counter()
for piece in m.stream("Once upon a time", max_new_tokens=max_new_tokens):
    pieces.append(piece)
    print(piece, end="", flush=True)
print(f"\n[{len(pieces)} pieces in {time.perf_counter() - t0:.2f} s]")

# %% [markdown]
# ## Tokens and logits
# The tokenizer and raw logits are one call away: `m.tokenizer.encode`, `m.logits(ids)` returns a
# `Tensor [n_tokens, vocab]` (use `.tolist()` or `.to_list()` for plain Python numbers).

# %%
ids = m.tokenizer.encode("Paris is the capital of")
logits = m.logits(ids)
last = logits.tolist()[-1]
top = sorted(range(len(last)), key=lambda i: -last[i])[:5]
print(ids, logits.shape)
for i in top:
    print(f"{i:6d} {m.tokenizer.decode([i])!r:12} logit {last[i]:.2f}")

# %% [markdown]
# ## Token details
# `stream(..., details=True)` yields a `TokenEvent` per token instead of text: the token, its
# probability under the model, the top alternatives, the step's time and phase (prefill / decode).

# %%
events = list(m.stream("The largest ocean on Earth is the", max_new_tokens=8, details=True, top=3))
for ev in events:
    alts = ", ".join(f"{t!r} {p:.2f}" for _, t, p in ev.top)
    print(f"{ev.phase:8} {ev.text!r:12} p={ev.prob:.3f}  {ev.seconds * 1e3:6.1f} ms   top: {alts}")

# %% [markdown]
# ## The generation widget
# `GenerationWidget` is an interactive panel: prompt, sampling controls, Generate / Stop, the reply
# streaming in with its speed (tick "shade tokens" to colour each token by its probability). Its
# state lives in traitlets and its actions are plain methods, so it can be driven from code too,
# as here (in JupyterLab, just press Generate).

# %%
from toolkit.notebook import GenerationWidget

w = GenerationWidget(m, "Write one sentence about the sea.", max_new_tokens=max_new_tokens,
                     temperature=0.7, seed=seed)
display(w)
w.generate(wait=True)
print(repr(w.text), f"({w.n_tokens} tokens, {w.tokens_per_s:.1f} tok/s)")

# %% [markdown]
# ## Magics
# `%load_ext toolkit` adds IPython magics for quick work: `%tk_load`, `%%tk_generate`, `%tk_cache`,
# `%tk_attention`, `%tk_profile`, `%tk_bench` (see `docs/notebook_layer.md`).

# %%
%load_ext toolkit
%tk_load {model_name} --threads {threads} -o m2

# %%
%%tk_generate --max-new-tokens 24 --seed 0
The best thing about learning a new language is

# %%
%%tk_generate --max-new-tokens 24 --chat
What is the boiling point of water at sea level?

# %% [markdown]
# ## Record the experiment
# `toolkit.experiments.record` writes a JSON manifest beside the results: versions, engine build, CPU
# features, threads, the model file's sha256, tokenizer and chat-template hashes, the sampling
# settings and seed, and a fingerprint of the logits of a fixed probe prompt. Anyone can later run
#
#     python -m toolkit repro check results/01_quickstart/manifest.json
#
# to see whether the same model and engine still give the same numbers (and which field differs if not).

# %%
manifest = ex.record(out_dir, m, sampling=dict(max_new_tokens=max_new_tokens, **sampling), seed=seed,
                     extra={"greedy": greedy, "sampled": a, "chat_reply": reply})
print("wrote", manifest["_path"])
print("probe logits sha256:", manifest["probe"]["logits_sha256"][:16], "...")
print(ex.check(manifest["_path"], model=m).summary())
