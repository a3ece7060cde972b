"""`%load_ext toolkit`: magics to load a model, generate, cache activations, draw attention,
profile and benchmark from notebook cells.

    %tk_load [MODEL] [--threads N] [-o VAR]          the model and a summary table
    %%tk_generate [--max-new-tokens N ...] [--chat]  streams the cell's completion, then its speed
    %tk_cache PROMPT --names PATTERN [-o VAR]        run_with_cache, bound to VAR (default: cache)
    %tk_attention PROMPT --layer L [--head H]        the attention pattern (all heads without --head)
    %tk_profile PROMPT [--max-new-tokens N]          per-layer timing table and chart
    %tk_bench [--lengths 16,64,256] [--new-tokens N] prefill / decode tokens/s by prompt length
              [--batch 1,2,4]                        (and total tokens/s by batch size)

A bad argument, a failure the toolkit reports (a ToolkitError) or an interrupt (Ctrl-C, the kernel's
stop button) ends the magic with one line (IPython's UsageError, no traceback) and leaves the kernel
as it was; bugs still show a traceback. Quotes around an argument are removed
(`%tk_attention "The cat sat" --layer 3`); an apostrophe inside a word stays.
"""
import functools
import keyword
import time

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import HTML, display

import toolkit
from toolkit import errors
from toolkit.common.generation import summary_line
from toolkit.common.machine import cpu_name

from . import display as tk_display
from . import plots, session

DEFAULT_MODEL = "smollm2-135m-instruct"


def _one_line(fn):
    """Turns a toolkit failure inside a magic into one line (UsageError) instead of a traceback."""
    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        try:
            return fn(self, *args, **kwargs)
        except UsageError:
            raise
        except (errors.ToolkitError, OSError) as exc:
            raise UsageError(f"{fn.__name__}: {type(exc).__name__}: {exc}") from None
        except KeyboardInterrupt:
            # the cell still fails (so Run All stops), but with one line, not a traceback through
            # the model's layers; every step leaves the model as it was, so the next cell works
            raise UsageError(f"{fn.__name__}: interrupted") from None
    return wrapper


def _unquote(s):
    # IPython splits magic lines without removing quotes: '"The cat sat"' arrives quoted
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"":
        return s[1:-1]
    return s


def _parse(magic, line):
    try:
        args = parse_argstring(magic, line)
    except UsageError:
        raise
    except ValueError as exc:  # unbalanced quotes in the line
        raise UsageError(f"{magic.__name__}: {exc}") from None
    for k, v in vars(args).items():
        if isinstance(v, str):
            setattr(args, k, _unquote(v))
        elif isinstance(v, list) and len(v) == 1 and isinstance(v[0], str):
            # a prompt given as one quoted string; a quote that opens one word of several stays
            setattr(args, k, [_unquote(v[0])])
    return args


@magics_class
class ToolkitMagics(Magics):
    def __init__(self, shell):
        super().__init__(shell)
        # the model the magics use: the last %tk_load. A replaced one is not closed (a variable may
        # still hold it); its weights are unmapped once nothing refers to it.
        self.model = None

    def _model(self):
        if self.model is None:
            print(f"(no model loaded: loading {DEFAULT_MODEL}; %tk_load picks another)")
            self._load(DEFAULT_MODEL, None)
        elif not session.is_open(self.model):
            # never swap in another model behind the user's back: results would silently change
            raise UsageError(f"the model the magics use ({self.model.path}) was closed: run %tk_load to load one")
        return self.model

    def _load(self, name, threads):
        t0 = time.perf_counter()
        m = toolkit.load(name, threads=threads)
        dt = time.perf_counter() - t0
        self.model = m
        return m, dt

    @magic_arguments()
    @argument("model", nargs="?", default=DEFAULT_MODEL, help="model name, .gguf file or HF directory")
    @argument("--threads", type=int, default=None, help="engine worker threads")
    @argument("-o", "--out", default="model", help="variable to bind the model to (default: model)")
    @line_magic
    @_one_line
    def tk_load(self, line):
        """Loads a model, binds it to a variable and shows its summary table."""
        args = _parse(self.tk_load, line)
        _check_name("tk_load", args.out)
        m, dt = self._load(args.model, args.threads)
        self.shell.user_ns[args.out] = m
        display(tk_display.Summary(tk_display.model_summary(m, dt), caption=f"toolkit.Model, bound to `{args.out}`"))

    @magic_arguments()
    @argument("--max-new-tokens", type=int, default=64)
    @argument("--temperature", type=float, default=0.0, help="0 = greedy")
    @argument("--top-p", type=float, default=1.0)
    @argument("--top-k", type=int, default=0)
    @argument("--seed", type=int, default=None)
    @argument("--chat", action="store_true", help="wrap the cell in the chat template")
    @cell_magic
    @_one_line
    def tk_generate(self, line, cell):
        """Streams the completion of the cell's text, then prints tokens and prefill/decode speed."""
        args = _parse(self.tk_generate, line)
        prompt = cell.strip("\n")
        if not prompt.strip():
            raise UsageError("tk_generate: the cell is empty: write the prompt in the cell body")
        m = self._model()
        if args.chat:
            prompt = m.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
        settings = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                        top_k=args.top_k, seed=args.seed)
        events = []
        try:
            for ev in session.stream_events(m, prompt, top=0, probs=False, **settings):
                events.append(ev)
                print(ev.text, end="", flush=True)
        except KeyboardInterrupt:
            print()
            print(summary_line(events))
            raise UsageError(f"tk_generate: interrupted after {len(events)} tokens") from None
        print()
        print(summary_line(events))

    @magic_arguments()
    @argument("prompt", nargs="+")
    @argument("--names", default="*", help="hook names: a name, a glob (blocks.*.hook_resid_post) or all")
    @argument("-o", "--out", default="cache", help="variable to bind the cache to (default: cache)")
    @line_magic
    @_one_line
    def tk_cache(self, line):
        """Runs the prompt with an activation cache and binds the cache to a variable."""
        args = _parse(self.tk_cache, line)
        _check_name("tk_cache", args.out)
        m = self._model()
        run = session.need(m, "run_with_cache", "%tk_cache")
        names = None if args.names in ("*", "all") else args.names
        ids = session.prompt_ids(m, " ".join(args.prompt))
        with session.model_lock(m):
            need_bytes, free = cache_bytes(m, ids, names), available_memory()
            if need_bytes is not None and need_bytes > free // 2:
                # past this the kernel is killed for memory instead of raising
                raise UsageError(f"tk_cache: caching {'every hook' if names is None else repr(names)} for {len(ids)} "
                                 f"tokens would take ~{tk_display.fmt_bytes(need_bytes)}, more than half the memory "
                                 f"available ({tk_display.fmt_bytes(free)}): pick fewer hooks with --names "
                                 f"(e.g. 'blocks.*.hook_resid_post') or use a shorter prompt")
            _, cache = run(ids, **({} if names is None else {"names_filter": names}))
        self.shell.user_ns[args.out] = cache
        fmt = self.shell.display_formatter.formatters["text/html"]
        tk_display.register_type(fmt, type(cache), tk_display.cache_html)
        print(f"bound to `{args.out}`")
        display(HTML(tk_display.cache_html(cache)))

    @magic_arguments()
    @argument("prompt", nargs="+")
    @argument("--layer", type=int, required=True)
    @argument("--head", type=int, default=None, help="one head (default: all heads of the layer)")
    @argument("--save", default=None, help="also write the figure as SAVE.png and SAVE.svg")
    @line_magic
    @_one_line
    def tk_attention(self, line):
        """Draws the attention pattern of a layer (one head, or all as a grid), labelled with tokens."""
        args = _parse(self.tk_attention, line)
        m = self._model()
        head = session.check_head(m, args.head)
        layer = session.check_layer(m, args.layer)          # -1: the last layer, titled with its index
        tokens, pats = session.attention_patterns(m, " ".join(args.prompt), layer)
        if head is None:
            fig = plots.attention_heads(pats, tokens, layer=layer)
        else:
            fig = plots.attention_pattern(pats[head], tokens, layer=layer, head=head)
        if args.save:
            plots.save(fig, args.save)
        display(fig)

    @magic_arguments()
    @argument("prompt", nargs="+")
    @argument("--max-new-tokens", type=int, default=16)
    @line_magic
    @_one_line
    def tk_profile(self, line):
        """Profiles one generation: the per-op / per-layer table and a per-layer timing chart."""
        args = _parse(self.tk_profile, line)
        m = self._model()
        profile = session.need(m, "profile", "%tk_profile")
        with session.model_lock(m):
            with profile() as prof:
                m.generate(" ".join(args.prompt), max_new_tokens=args.max_new_tokens)
        fmt = self.shell.display_formatter.formatters["text/html"]
        tk_display.register_type(fmt, type(prof), tk_display.profile_html)
        display(HTML(tk_display.profile_html(prof)))
        names, secs, attn, mlp = layer_seconds(prof.by_layer())
        if names:
            parts = {"attention": attn, "mlp": mlp} if attn and mlp else None
            display(plots.layer_timing(names, secs, parts=parts, title=f"time per layer ({cpu_name()})"))
        return None

    @magic_arguments()
    @argument("--lengths", default="16,64,256", help="prompt lengths in tokens, comma-separated")
    @argument("--new-tokens", type=int, default=32, help="decode tokens after each prompt")
    @argument("--batch", default=None, help="batch sizes (comma-separated) for a tokens/s vs batch size plot")
    @argument("--save", default=None, help="also write the figure as SAVE.png and SAVE.svg")
    @line_magic
    @_one_line
    def tk_bench(self, line):
        """Prefill and decode tokens/s at a few prompt lengths, as a table and a plot (with the CPU)."""
        args = _parse(self.tk_bench, line)
        lengths = _int_list("--lengths", args.lengths)
        batches = _int_list("--batch", args.batch) if args.batch else None
        if args.new_tokens < 2:
            raise UsageError("tk_bench: --new-tokens must be at least 2 (the first new token comes with the prefill; "
                             "decode is timed from the second)")
        m = self._model()
        limit = getattr(getattr(getattr(m, "plugin", None), "batch_manager", None), "max_batch_size", None)
        if batches and limit and max(batches) > limit:
            # beyond it the batch manager queues: the figure would not show that batch size
            raise UsageError(f"tk_bench: --batch sizes must be at most {limit}, the most sequences this model's batch "
                             f"manager runs at once")
        rows = bench(m, lengths, args.new_tokens)
        cpu = cpu_name()
        display(tk_display.Summary([(r["prompt_tokens"], round(r["prefill_tok_s"], 1), r["decode_tokens"],
                                     round(r["decode_tok_s"], 1)) for r in rows],
                                   header=("prompt tokens", "prefill tok/s", "decode tokens", "decode tok/s"),
                                   caption=f"tk_bench on {cpu}"))
        fig = plots.throughput_vs_prompt_length([r["prompt_tokens"] for r in rows],
                                                [r["prefill_tok_s"] for r in rows],
                                                [r["decode_tok_s"] for r in rows], cpu=cpu)
        if args.save:
            plots.save(fig, args.save)
        display(fig)
        if batches:
            rates = bench_batch(m, batches, args.new_tokens)
            fig = plots.throughput_vs_batch_size(batches, rates, [r / b for r, b in zip(rates, batches)], cpu=cpu,
                                                 title="generated tokens/s vs batch size (prefill included)")
            if args.save:
                plots.save(fig, f"{args.save}_batch")
            display(fig)
        return None


available_memory = session.available_memory


def cache_bytes(model, ids, names=None):
    """Bytes run_with_cache(ids, names) keeps, from the model's hook_nbytes (exact, no pass run);
    None for a model that cannot say (run_with_cache then still refuses what exceeds the memory)."""
    lm = getattr(model, "model", model)
    if not callable(getattr(lm, "hook_nbytes", None)):
        return None
    resolved = lm.hook_names() if names is None else lm.hook_set.resolve(names)
    return lm.hook_nbytes(resolved, len(ids))


def _check_name(magic, name):
    if not name.isidentifier() or keyword.iskeyword(name):
        raise UsageError(f"{magic}: -o {name!r} is not a valid variable name")


def _int_list(flag, text):
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"tk_bench: {flag} takes whole numbers separated by commas, got {text!r}") from None
    if not out or min(out) < 1:
        raise UsageError(f"tk_bench: {flag} must list positive numbers")
    return out


def bench_batch(model, sizes, new_tokens=32):
    """Total tokens/s (prefill included) of `size` different short prompts generated together."""
    prompts = ["The capital of France is", "Once upon a time", "def fibonacci(n):", "The three primary colors are",
               "In 1969, astronauts", "Water boils at", "My favourite book is", "The quick brown fox"]
    out = []
    for b in sizes:
        batch = [prompts[i % len(prompts)] + " " * (i // len(prompts)) for i in range(b)]
        with session.model_lock(model):
            t0 = time.perf_counter()
            model.plugin.infer_batch(batch, max_new_tokens=new_tokens, stop_at_eos=False, temperature=0.0)
            dt = time.perf_counter() - t0
        out.append(b * new_tokens / dt)
    return out


def bench(model, lengths, new_tokens=32):
    """[{prompt_tokens, prefill_tok_s, decode_tokens, decode_tok_s}] for prompts of each length
    (cut from a repeated sentence), greedy, EOS ignored so every run decodes new_tokens."""
    base = model.tokenizer.encode("The quick brown fox jumps over the lazy dog while the cat watches. ")
    out = []
    for n in lengths:
        ids = (base * (n // len(base) + 1))[:n]
        events = list(session.stream_events(model, ids, top=0, probs=False, max_new_tokens=new_tokens,
                                             stop_at_eos=False))
        pre = events[0]
        dec = [e for e in events if e.phase == "decode"]
        ds = sum(e.seconds for e in dec)
        out.append(dict(prompt_tokens=n, prefill_tok_s=n / pre.seconds, decode_tokens=len(dec),
                        decode_tok_s=len(dec) / ds if ds > 0 else 0.0))
    return out


def layer_seconds(by_layer):
    """(layer indices, seconds per block, attention seconds, mlp seconds) from a profile's by_layer()."""
    import re

    names, secs, attn, mlp = [], [], [], []
    for name, r in by_layer.items():
        m = re.fullmatch(r"blocks\.(\d+)", name)
        if m and r.get("seconds") is not None:
            i = m.group(1)
            names.append(int(i))
            secs.append(r["seconds"])
            a, f = by_layer.get(f"blocks.{i}.attn"), by_layer.get(f"blocks.{i}.mlp")
            if a and f and a.get("seconds") is not None and f.get("seconds") is not None:
                attn.append(a["seconds"])
                mlp.append(f["seconds"])
    if len(attn) != len(names):
        attn, mlp = [], []
    return names, secs, attn, mlp


def load_ipython_extension(ip):
    old = ip.magics_manager.registry.get("ToolkitMagics")
    magics = ToolkitMagics(ip)
    magics.model = getattr(old, "model", None)  # %reload_ext keeps the loaded model
    ip.register_magics(magics)
    tk_display.register(ip)


def unload_ipython_extension(ip):
    tk_display.unregister(ip)
