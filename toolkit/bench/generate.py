"""`python -m toolkit.bench generate`: prefill and decode speed of the default model, against llama.cpp.

Prefill runs a 512-token prompt in one pass; decode generates 128 tokens at batch 1 (greedy, EOS
ignored). When `llama-cpp-python` is importable, llama.cpp runs the same GGUF file in the same
process with the same thread count, and the table shows our speed as a ratio of its speed. Runs are
interleaved (ours, theirs, ours, ...) and medians reported, because this machine's memory bandwidth
drifts between runs.
"""
import argparse
import statistics
import time


def _prompt_ids(tokenizer, n):
    text = ("The history of the printing press begins with movable type in East Asia and continues "
            "through Gutenberg's workshop in Mainz, where a new kind of book was born. ")
    ids = []
    while len(ids) < n:
        ids += tokenizer.encode(text)
    return ids[:n]


def greedy_run(m, ids, n_decode):
    # timed with the profiler's steps, the clock generation's tokens/s and `m.profile()` read
    from toolkit.core.engine import functional as F
    from toolkit.core.engine import profile

    lm = m.model
    cache = lm.new_cache(len(ids) + n_decode + 1)
    with profile.step("prefill", len(ids)) as pre:
        logits = lm.forward_batch([(ids, cache)], logits="last")
    tok = F.sample(logits.reshape(-1), 0.0)
    with profile.step("decode", n_decode) as dec:
        for _ in range(n_decode):
            logits = lm.forward_batch([([tok], cache)], logits="last")
            tok = F.sample(logits.reshape(-1), 0.0)
    return len(ids) / pre.seconds, n_decode / dec.seconds


class _LlamaCpp:
    def __init__(self, path, threads, n_ctx):
        import llama_cpp

        self.llama_cpp = llama_cpp
        self.llm = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                                   n_batch=512, n_ubatch=512, verbose=False, logits_all=False)

    def run(self, ids, n_decode):
        llm = self.llm
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        t1 = time.perf_counter()
        tok = llm.sample(temp=0.0)
        t2 = time.perf_counter()
        for _ in range(n_decode):
            llm.eval([tok])
            tok = llm.sample(temp=0.0)
        t3 = time.perf_counter()
        return len(ids) / (t1 - t0), n_decode / (t3 - t2)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m toolkit.bench generate", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--prefill", type=int, default=512)
    p.add_argument("--decode", type=int, default=128)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--kv-dtype", default="F32", choices=["F32", "F16"],
                   help="our KV cache storage (llama.cpp's default is F16)")
    p.add_argument("--no-peer", action="store_true", help="skip llama.cpp even if it is installed")
    args = p.parse_args(argv)

    import toolkit
    from toolkit.common.hub import resolve_model
    from toolkit.core.engine import backend

    path = str(resolve_model(args.model))
    m = toolkit.load(path, threads=args.threads, kv_cache_dtype=args.kv_dtype)
    threads = backend.get_threads()
    ids = _prompt_ids(m.tokenizer, args.prefill)
    peer = None
    if not args.no_peer:
        try:
            peer = _LlamaCpp(path, threads, args.prefill + args.decode + 8)
        except ImportError:
            print("llama-cpp-python is not installed (pip install '.[bench]'); showing our figures only")
    print(f"model {path}\nthreads {threads}, prefill {len(ids)} tokens, decode {args.decode} tokens (batch 1, greedy), "
          f"our KV cache {args.kv_dtype}")
    print(f"engine: {backend.build_info()}")
    greedy_run(m, ids[:32], 4)  # warm up: page in the weights, start the pool
    if peer:
        peer.run(ids[:32], 4)
    ours, theirs = [], []
    for _ in range(args.repeats):
        ours.append(greedy_run(m, ids, args.decode))
        if peer:
            theirs.append(peer.run(ids, args.decode))
    rows = [("cengine-toolkit", ours)] + ([("llama.cpp", theirs)] if peer else [])
    med = {}
    print(f"\n{'engine':<18}{'prefill tok/s':>16}{'decode tok/s':>16}")
    for name, runs in rows:
        pre = statistics.median(r[0] for r in runs)
        dec = statistics.median(r[1] for r in runs)
        med[name] = (pre, dec)
        print(f"{name:<18}{pre:>16.1f}{dec:>16.1f}")
    if peer:
        (op, od), (tp, td) = med["cengine-toolkit"], med["llama.cpp"]
        print(f"{'ratio (ours/llama.cpp)':<18}{op / tp:>10.2f}x{od / td:>15.2f}x")
        print("targets: decode >= 1.0x, prefill >= 0.8x")
    print(f"(medians of {args.repeats} interleaved runs)")
    m.close()


if __name__ == "__main__":
    main()
