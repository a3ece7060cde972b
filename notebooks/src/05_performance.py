# %% [markdown]
# # 05 · Performance: throughput, batching, per-layer time, the roofline, a trace
#
# How fast is the engine on *this* machine, and where does the time go? Every figure below is
# measured here, now; compare figures only within one run (the same process, interleaved, medians),
# since a laptop's or a shared server's speed drifts from minute to minute.
#
# Decode (one token at a time) reads every weight once per token, so its ceiling is memory
# bandwidth: `tokens/s ≤ bandwidth / bytes of weights`. Prefill and batching reuse each weight for
# many rows, so they can run much faster per token.

# %% tags=["parameters"]
model_name = "smollm2-135m-instruct"
threads = 2
seed = 0
prompt_tokens = 128
decode_tokens = 32
repeats = 3
batch_sizes = [1, 2, 4, 8]
batch_new_tokens = 16
out_dir = "results/05_performance"

# %%
import os
import platform
import random
import statistics
import time

%matplotlib inline
from IPython.display import display

import toolkit
import toolkit.experiments as ex
from toolkit.core.engine import backend
from toolkit.notebook import plots

m = toolkit.load(model_name, threads=threads)
cpu = ex.cpu_info()
print("CPU:", cpu["model_name"], "|", platform.machine(), "| flags:", " ".join(cpu["flags"] or []))
print("engine:", backend.build_info(), "| threads:", backend.get_threads())
weight_bytes = sum(p.nbytes for p in m.model.parameters())
print(f"weights: {weight_bytes / 2**20:.1f} MiB in memory ({m.model.num_parameters() / 1e6:.1f} M parameters)")

# %% [markdown]
# ## Prefill and decode throughput
# Straight from the model's forward pass with a KV cache: one pass over a `prompt_tokens`-token
# prompt (prefill), then `decode_tokens` passes of one token each (decode). Medians of `repeats` runs.

# %%
rng = random.Random(seed)
prompt_ids = [rng.randrange(1000, 20000) for _ in range(prompt_tokens)]
lm = m.model


def one_run():
    cache = lm.new_cache(prompt_tokens + decode_tokens)
    t0 = time.perf_counter()
    logits = lm.forward_batch([(prompt_ids, cache)], logits="last")
    t1 = time.perf_counter()
    for _ in range(decode_tokens):
        tok = rng.randrange(1000, 20000)        # any next token will do: the speed does not depend on it
        logits = lm.forward_batch([([tok], cache)], logits="last")
    t2 = time.perf_counter()
    return t1 - t0, (t2 - t1) / decode_tokens


runs = [one_run() for _ in range(repeats)]
prefill_s = statistics.median(r[0] for r in runs)
decode_s = statistics.median(r[1] for r in runs)
print(f"prefill: {prompt_tokens / prefill_s:8.1f} tok/s  ({prefill_s * 1e3:.1f} ms for {prompt_tokens} tokens)")
print(f"decode : {1 / decode_s:8.1f} tok/s  ({decode_s * 1e3:.2f} ms per token)")

# %% [markdown]
# ## The roofline for decode
# The engine measures the machine's streaming read bandwidth with its own kernel. Decode must read
# all weights per token, so `weights / time per token` is the bandwidth decode achieves; the ratio
# to the measured bandwidth says how close to the memory roof it runs.

# %%
bw_seconds = backend.bench_read_bandwidth(256 << 20, 3)
bandwidth = (256 << 20) / bw_seconds / 1e9
achieved = weight_bytes / decode_s / 1e9
print(f"measured read bandwidth : {bandwidth:6.1f} GB/s ({backend.get_threads()} threads)")
print(f"decode reads weights at : {achieved:6.1f} GB/s  = {100 * achieved / bandwidth:.0f}% of it")
print(f"decode ceiling          : {bandwidth * 1e9 / weight_bytes:6.1f} tok/s (if only weights were read)")

# %% [markdown]
# ## Batch scaling
# `BatchManager` (behind `m.plugin.infer_batch`) advances every request in one pass per step, so
# each weight is read once for the whole batch. Aggregate tokens/s should grow with the batch until
# the matmuls stop being bandwidth-bound. The batch sizes are measured interleaved (1, 2, 4, 8, then
# again), so a slow minute of a shared machine slows every size alike instead of one of them.

# %%
prompts = ["The history of", "In a distant galaxy", "Recipe: how to bake", "The stock market today",
           "Once upon a time", "A guide to Python", "The best way to learn", "Scientists discovered"]
times = {b: [] for b in batch_sizes}
for _ in range(repeats):
    for b in batch_sizes:
        batch = (prompts * (b // len(prompts) + 1))[:b]
        t0 = time.perf_counter()
        m.plugin.infer_batch(batch, max_new_tokens=batch_new_tokens, stop_at_eos=False)
        times[b].append(time.perf_counter() - t0)
scaling = {b: b * batch_new_tokens / statistics.median(times[b]) for b in batch_sizes}
for b in batch_sizes:
    print(f"batch {b}: {scaling[b]:7.1f} tok/s aggregate  ({scaling[b] / scaling[batch_sizes[0]]:.2f}x "
          f"batch {batch_sizes[0]})")

display(plots.throughput_vs_batch_size(list(scaling), list(scaling.values()),
                                       per_sequence=[v / b for b, v in scaling.items()],
                                       title="generated tok/s (prefill included)", cpu=cpu["model_name"]))

# %% [markdown]
# ## Per-layer time and the trace
# `m.profile()` switches on the engine's op counters: every op is timed and tagged with the module it
# ran in (`blocks.3.attn`, `blocks.3.mlp`, `unembed`, ...) and the generation step it belongs to.
# `export_chrome_trace` writes a file to open in https://ui.perfetto.dev (or chrome://tracing).

# %%
with m.profile() as prof:
    m.generate("The capital of France is", max_new_tokens=16)
print(prof.table())

# %%
rows = prof.by_layer()
layers = {name: r for name, r in rows.items() if name.count(".") == 1 and name.startswith("blocks.")}
parts = {part: [rows.get(f"{name}.{part}", {}).get("seconds") or 0.0 for name in layers] for part in ("attn", "mlp")}
passes = rows["blocks.0"]["calls"]        # forward passes: the prefill gives the first new token
display(plots.layer_timing([n.split(".")[1] for n in layers], [r["seconds"] for r in layers.values()], parts=parts,
                           title=f"wall time per transformer block (prefill + {passes - 1} decode steps)"))

os.makedirs(out_dir, exist_ok=True)
trace = os.path.join(out_dir, "trace.json")
prof.export_chrome_trace(trace)
print(f"trace: {trace} ({os.path.getsize(trace) / 1e6:.1f} MB) - open it in https://ui.perfetto.dev")

# %%
manifest = ex.record(out_dir, m, seed=seed, extra={
    "cpu": cpu["model_name"], "prefill_tok_s": prompt_tokens / prefill_s, "decode_tok_s": 1 / decode_s,
    "read_bandwidth_gb_s": bandwidth, "decode_gb_s": achieved, "batch_tok_s": scaling,
    "per_layer_ms": {k: r["seconds"] * 1e3 for k, r in layers.items()}})
print("wrote", manifest["_path"])
