"""Command line: `python -m toolkit generate "PROMPT"`, `python -m toolkit profile "PROMPT"`,
`python -m toolkit convert IN.gguf OUT_DIR`.

`generate` streams the model's text to stdout and prints prefill/decode speed to stderr.
"""
import argparse
import sys

from toolkit import errors


def _generate(args):
    import toolkit
    from toolkit.common.generation import summary_line
    from toolkit.core.engine import backend

    with toolkit.load(args.model, threads=args.threads) as m:
        if args.chat:
            prompt = m.apply_chat_template([{"role": "user", "content": args.prompt}], add_generation_prompt=True)
        else:
            prompt = args.prompt
        kwargs = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                      top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                      seed=args.seed, stop=args.stop or [])
        events = []
        for ev in m.plugin.stream_text(prompt, details=True, probs=False, **kwargs):
            events.append(ev)
            sys.stdout.write(ev.text)
            sys.stdout.flush()
        sys.stdout.write("\n")
        print(summary_line(events) + f", {backend.get_threads()} threads", file=sys.stderr)
        dec = [e for e in events if e.phase == "decode"]
        ds = sum(e.seconds for e in dec)
        _speed_guard(m.model, len(dec) / ds if ds else 0.0, len(dec))


def _speed_guard(model, decode_tps, decode_tokens):
    """Warns when decode ran under a tenth of what the weight bytes per token and this machine's
    read bandwidth allow: a kernel has collapsed on this CPU (as Q4 on subnormals did on Intel)."""
    if decode_tokens < 4:  # too few to time
        return
    from toolkit.bench.bandwidth import decode_bytes_per_token, read_bandwidth

    bw, per_token = read_bandwidth(), decode_bytes_per_token(model)
    ceiling = bw / per_token
    if decode_tps < 0.1 * ceiling:
        print(f"WARNING: decode ran at {decode_tps:.1f} tok/s, under a tenth of the {ceiling:.0f} tok/s that "
              f"{per_token / 1e6:.0f} MB of weights per token at {bw / 1e9:.1f} GB/s of read bandwidth allow: "
              "something is far slower on this CPU than it should be (or other programs kept the cores "
              "busy); `python -m toolkit.bench kernels` shows which kernel", file=sys.stderr)


def _profile(args):
    import toolkit

    with toolkit.load(args.model, threads=args.threads) as m:
        prompt = args.prompt
        if args.chat:
            prompt = m.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
        with m.profile() as prof:
            text = m.generate(prompt, max_new_tokens=args.new_tokens, temperature=0.0)
        print(f"generated: {text!r}\n")
        print(prof.table())
        if args.trace:
            prof.export_chrome_trace(args.trace)
            print(f"\nwrote {args.trace} (open it in https://ui.perfetto.dev or chrome://tracing)")


def _convert(args):
    from toolkit.models.llama.convert import convert_gguf_to_hf
    from toolkit.common.hub import resolve_model

    files = convert_gguf_to_hf(str(resolve_model(args.src)), args.out_dir, dtype=args.dtype)
    print(f"wrote {args.out_dir}: {', '.join(files)}")


def _repro_check(args):
    from toolkit import experiments

    result = experiments.check(args.manifest, model=args.model, threads=args.threads)
    print(f"{args.manifest}: {result.summary()}")
    if not result.ok:
        raise SystemExit(1)  # 1: ran, but does not reproduce; 2: could not check (ToolkitError)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m toolkit", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="generate text with a model (default: SmolLM2-135M-Instruct)")
    g.add_argument("prompt")
    g.add_argument("--model", default="smollm2-135m-instruct", help="model name, .gguf file or HF directory")
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    g.add_argument("--max-new-tokens", type=int, default=128)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--min-p", type=float, default=0.0)
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stop", action="append", help="stop string (repeatable)")
    g.add_argument("--threads", type=int, default=None)
    g.set_defaults(fn=_generate)
    pr = sub.add_parser("profile", help="generate greedily under the profiler; print per-layer and per-op tables")
    pr.add_argument("prompt")
    pr.add_argument("--new-tokens", "--max-new-tokens", dest="new_tokens", type=int, default=16)
    pr.add_argument("--trace", default=None, help="also write a Chrome trace (JSON) here")
    pr.add_argument("--model", default="smollm2-135m-instruct", help="model name, .gguf file or HF directory")
    pr.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    pr.add_argument("--threads", type=int, default=None)
    pr.set_defaults(fn=_profile)
    c = sub.add_parser("convert", help="convert a GGUF file to a Hugging Face model directory")
    c.add_argument("src", help=".gguf file (or the default model's name)")
    c.add_argument("out_dir")
    c.add_argument("--dtype", default="F32", choices=["F32", "BF16"])
    c.set_defaults(fn=_convert)
    # -- repro (experiment manifests; toolkit/experiments.py) --
    r = sub.add_parser("repro", help="check that an experiment manifest still reproduces")
    rsub = r.add_subparsers(dest="repro_cmd", required=True)
    rcheck = rsub.add_parser("check", help="re-run the manifest's probe and compare every field")
    rcheck.add_argument("manifest", help="manifest .json (or the directory holding manifest.json)")
    rcheck.add_argument("--model", default=None, help="check this model file/name instead of the recorded one")
    rcheck.add_argument("--threads", type=int, default=None)
    rcheck.set_defaults(fn=_repro_check)
    args = p.parse_args(argv)
    try:
        args.fn(args)
    except (errors.ToolkitError, OSError) as exc:  # OSError: an output path it cannot write
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
