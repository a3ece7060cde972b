"""`python -m toolkit.bench hooks`: what hooks cost during decoding.

Decodes the same tokens (batch 1, greedy, a fixed prompt) with: no hooks; one hook (a function
that edits nothing, on one residual stream); every residual stream cached (resid_pre, resid_mid,
resid_post of every block, copied each step); every attention pattern cached. Configurations run
interleaved, round after round, and the table shows medians and ratios to the no-hook run.
Targets: no hooks costs nothing measurable; every residual stream cached <= 10 %.
"""
import argparse
import statistics
import time


def _decode(lm, prompt, n, seq_hooks):
    """Decode tokens/s over n steps after prefilling prompt (tokens fed greedily)."""
    from toolkit.core.engine import functional as F

    cache = lm.new_cache(len(prompt) + n + 1)
    logits = lm.forward_batch([(prompt, cache)], logits="last", seq_hooks=seq_hooks)
    tok = F.argmax(logits)[0]
    t0 = time.perf_counter()
    for _ in range(n):
        logits = lm.forward_batch([([tok], cache)], logits="last", seq_hooks=seq_hooks)
        tok = F.argmax(logits)[0]
    return n / (time.perf_counter() - t0)


def configs(lm):
    from toolkit.interp import read_only

    L = lm.config.num_hidden_layers
    kept = []

    def keep(t, hook):
        kept.append(t)
        if len(kept) > 4096:  # bounded memory over long runs; the copy has been made
            kept.clear()

    def nothing(t, hook):
        return None
    resid = [f"blocks.{i}.hook_resid_{w}" for i in range(L) for w in ("pre", "mid", "post")]
    return [
        ("no hooks", None),
        ("one hook", [[(f"blocks.{L // 2}.hook_resid_post", nothing)]]),
        ("every resid cached", [[(n, read_only(keep)) for n in resid]]),
        ("every pattern cached", [[(f"blocks.{i}.attn.hook_pattern", read_only(keep)) for i in range(L)]]),
    ]


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m toolkit.bench hooks", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--prompt", type=int, default=64, help="prompt tokens before decoding")
    p.add_argument("--decode", type=int, default=48, help="decode steps per run")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)

    import toolkit
    from toolkit.common.machine import cpu_name
    from toolkit.core.engine import backend

    m = toolkit.load(args.model, threads=args.threads)
    lm = m.model
    text = "The history of the printing press begins with movable type in East Asia and continues. "
    prompt = []
    while len(prompt) < args.prompt:
        prompt += m.tokenizer.encode(text)
    prompt = prompt[:args.prompt]
    cfgs = configs(lm)
    print(f"CPU {cpu_name()}, {backend.get_threads()} threads; prompt {len(prompt)} tokens, "
          f"{args.decode} decode steps per run, {args.rounds} interleaved rounds")
    for _, hooks in cfgs:  # warm up
        _decode(lm, prompt[:8], 4, hooks)
    runs = {name: [] for name, _ in cfgs}
    for r in range(args.rounds):
        order = cfgs if r % 2 == 0 else cfgs[::-1]  # alternate the order so drift hits every config alike
        for name, hooks in order:
            runs[name].append(_decode(lm, prompt, args.decode, hooks))
    base = statistics.median(runs["no hooks"])
    print(f"\n{'configuration':<24}{'decode tok/s':>14}{'ratio':>9}")
    for name, _ in cfgs:
        med = statistics.median(runs[name])
        print(f"{name:<24}{med:>14.1f}{med / base:>8.3f}x")
    print("(medians; ratio = tok/s / no-hook tok/s; targets: every resid cached >= 0.90x)")
    m.close()
    return 0


if __name__ == "__main__":
    main()
