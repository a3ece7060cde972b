"""`python -m toolkit.bench batch`: total generation throughput at 1, 2, 4, 8, 16 concurrent sequences.

Each sequence has its own 16-token prompt and generates 128 tokens (greedy, EOS ignored), all
through one BatchManager: the figure is generated tokens per second of wall time for the whole
batch, prefill included, and its ratio to batch 1. When `llama-cpp-python` is importable, llama.cpp
runs the same GGUF file as the same number of sequences in one llama_batch per step (its batched
decode), with the same thread count. Runs are interleaved (every size, ours then theirs, repeated)
and medians reported: this machine's CPU is shared and its speed drifts between runs.
"""
import argparse
import statistics
import time

from toolkit.common.machine import cpu_name

SIZES = (1, 2, 4, 8, 16)


def _prompts(tokenizer, n, length):
    """n different prompts of `length` tokens each (windows of one long text)."""
    text = ("The history of the printing press begins with movable type in East Asia and continues "
            "through Gutenberg's workshop in Mainz, where a new kind of book was born. Within fifty years "
            "presses ran in more than two hundred cities, and the price of a book fell by two thirds. ")
    ids = []
    while len(ids) < n * length:
        ids += tokenizer.encode(text)
    return [ids[i * length:(i + 1) * length] for i in range(n)]


def _ours(m, prompts, n_new):
    from toolkit.common.managers.batch_manager import BatchManager

    bm = BatchManager(m.model, max_batch_size=len(prompts))
    for i, p in enumerate(prompts):
        bm.add_request(i, p, max_new_tokens=n_new, stop_at_eos=False)
    t0 = time.perf_counter()
    results = bm.run()
    dt = time.perf_counter() - t0
    return sum(len(r.token_ids) for r in results.values()) / dt


class _LlamaCppBatched:
    """llama.cpp's batched decode through llama-cpp-python's low-level API: one llama_batch holds
    every sequence's prompt, then one token per sequence per step, each with its own seq_id."""

    def __init__(self, path, threads, n_seq, n_ctx):
        import llama_cpp as L

        self.L = L
        self.llm = L.Llama(model_path=path, n_ctx=16, n_threads=threads, verbose=False)  # loads the weights
        p = L.llama_context_default_params()
        p.n_ctx, p.n_batch, p.n_ubatch, p.n_seq_max = n_ctx, 512, 512, n_seq
        p.n_threads, p.n_threads_batch = threads, threads
        new_ctx = getattr(L, "llama_init_from_model", None) or L.llama_new_context_with_model
        self.ctx = new_ctx(self.llm.model, p)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create a context")
        self.sampler = L.llama_sampler_init_greedy()

    def _clear(self):
        L = self.L
        if hasattr(L, "llama_memory_clear"):
            L.llama_memory_clear(L.llama_get_memory(self.ctx), True)
        else:
            L.llama_kv_self_clear(self.ctx) if hasattr(L, "llama_kv_self_clear") else L.llama_kv_cache_clear(self.ctx)

    def _decode(self, batch, items):
        """items: (token, pos, seq, wants logits); returns the batch indices that have logits."""
        for i, (tok, pos, seq, logits) in enumerate(items):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, pos, 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = logits
        batch.n_tokens = len(items)
        rc = self.L.llama_decode(self.ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        return [i for i, it in enumerate(items) if it[3]]

    def run(self, prompts, n_new):
        L, n = self.L, len(prompts)
        self._clear()
        batch = L.llama_batch_init(max(sum(len(p) for p in prompts), n), 0, n)
        try:
            t0 = time.perf_counter()
            items = [(tok, pos, s, pos == len(p) - 1) for s, p in enumerate(prompts) for pos, tok in enumerate(p)]
            rows = self._decode(batch, items)
            made = 0
            for step in range(n_new):
                toks = [L.llama_sampler_sample(self.sampler, self.ctx, r) for r in rows]
                made += n
                if step == n_new - 1:
                    break
                rows = self._decode(batch, [(t, len(p) + step, s, True) for s, (t, p) in enumerate(zip(toks, prompts))])
            return made / (time.perf_counter() - t0)
        finally:
            L.llama_batch_free(batch)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m toolkit.bench batch", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--sizes", default=",".join(map(str, SIZES)), help="concurrent sequences, comma separated")
    p.add_argument("--prompt", type=int, default=16, help="prompt tokens per sequence")
    p.add_argument("--new", type=int, default=128, help="new tokens per sequence")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="sizes 1,2,4,8, 32 new tokens, one run")
    p.add_argument("--no-peer", action="store_true", help="skip llama.cpp even if it is installed")
    p.add_argument("--compare-gemm", action="store_true",
                   help="also time every size with the engine's batch invariance off (packed GEMM for many "
                        "rows, so a request's logits depend on what shares its pass), interleaved")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.new, args.repeats = "1,2,4,8", 32, 1
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        p.error(f"--sizes must be comma-separated ints, got {args.sizes!r}")
    if not sizes or min(sizes) < 1 or args.new < 1 or args.prompt < 1 or args.repeats < 1:
        p.error("sizes, --new, --prompt and --repeats must be positive")

    import toolkit
    from toolkit.common.hub import resolve_model
    from toolkit.core.engine import backend

    path = str(resolve_model(args.model))
    m = toolkit.load(path, threads=args.threads)
    threads = backend.get_threads()
    invariant = backend.get_batch_invariant()
    prompts = _prompts(m.tokenizer, max(sizes), args.prompt)
    peer = None
    if not args.no_peer:
        try:
            peer = _LlamaCppBatched(path, threads, max(sizes), max(sizes) * (args.prompt + args.new) + 64)
        except ImportError:
            print("llama-cpp-python is not installed (pip install '.[bench]'); showing our figures only")
        except (AttributeError, RuntimeError, OSError) as e:
            print(f"llama.cpp's batched API is not usable with this llama-cpp-python ({e}); our figures only")
    print(f"model {path}\nCPU {cpu_name()}, threads {threads}; {args.prompt}-token prompts, {args.new} new tokens "
          f"per sequence (greedy, EOS ignored)")
    print(f"engine: {backend.build_info()}; batch invariance {'on' if invariant else 'OFF'}")
    _ours(m, prompts[:2], 4)  # warm up: page in the weights, start the pool
    if peer:
        peer.run(prompts[:2], 4)
    ours = {n: [] for n in sizes}
    gemm = {n: [] for n in sizes}
    theirs = {n: [] for n in sizes}
    try:
        for _ in range(args.repeats):
            for n in sizes:
                ours[n].append(_ours(m, prompts[:n], args.new))
                if args.compare_gemm:
                    backend.set_batch_invariant(False)
                    gemm[n].append(_ours(m, prompts[:n], args.new))
                    backend.set_batch_invariant(invariant)
                if peer:
                    theirs[n].append(peer.run(prompts[:n], args.new))
    finally:
        backend.set_batch_invariant(invariant)
    med = {n: statistics.median(v) for n, v in ours.items()}
    base = med[sizes[0]] if sizes[0] == 1 else None
    head = f"\n{'sequences':>10}{'ours tok/s':>13}{'vs batch 1':>12}"
    if args.compare_gemm:
        head += f"{'GEMM tok/s':>12}{'ours/GEMM':>11}"
    if peer:
        head += f"{'llama.cpp tok/s':>17}{'ours/llama.cpp':>16}"
    print(head)
    for n in sizes:
        line = f"{n:>10}{med[n]:>13.1f}" + (f"{med[n] / base:>11.2f}x" if base else f"{'-':>12}")
        if args.compare_gemm:
            g = statistics.median(gemm[n])
            line += f"{g:>12.1f}{med[n] / g:>10.2f}x"
        if peer:
            t = statistics.median(theirs[n])
            line += f"{t:>17.1f}{med[n] / t:>15.2f}x"
        print(line)
    print("targets: 8 sequences >= 3x our batch 1" + (", >= 1.5x llama.cpp at 8" if peer else ""))
    print(f"(medians of {args.repeats} interleaved runs; the CPU is shared, so figures drift between runs)")
    if args.compare_gemm:
        print("GEMM: the same runs with batch invariance off (not bit-identical to running alone)")
    m.close()
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
