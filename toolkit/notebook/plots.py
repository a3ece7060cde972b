"""Figures for notebooks: attention patterns, throughput, per-layer timing, logit lens, residual norms.

Every function takes plain Python lists (never tensors: call `.tolist()` first), draws on a new
matplotlib `Figure` (not pyplot, so nothing piles up in pyplot's global figure list when a loop
draws hundreds) and returns it, for users to restyle. A returned Figure displays itself in a
notebook; `save(fig, "name")` writes name.png and name.svg.

matplotlib is imported lazily: the rest of the toolkit does not need it.
"""
import math
import numbers
import os

from toolkit import errors

__all__ = ["attention_pattern", "attention_heads", "throughput_over_generation", "throughput_vs_prompt_length",
           "throughput_vs_batch_size", "layer_timing", "logit_lens", "logit_lens_figure", "residual_norms", "save",
           "to_png", "token_label"]


def _figure(w, h):
    from matplotlib.figure import Figure

    _show_figures_in_ipython(Figure)
    fig = Figure(figsize=(w, h), layout="constrained")
    return fig


def _show_figures_in_ipython(figure_type):
    """A Figure made without pyplot has no view of its own: IPython's inline backend registers its
    PNG view only once pyplot is imported (`%matplotlib inline`), so without that a returned Figure
    showed as '<Figure size ...>' text. Register the view with the running shell, if any."""
    try:
        from IPython import get_ipython
    except ImportError:  # plain Python: nothing displays figures
        return
    ip = get_ipython()
    if ip is None:
        return
    fmt = ip.display_formatter.formatters["image/png"]
    try:
        fmt.lookup_by_type(figure_type)   # the inline backend's own view, or ours from an earlier call
    except KeyError:
        from IPython.core.pylabtools import print_figure

        fmt.for_type(figure_type, lambda fig: print_figure(fig, "png", bbox_inches="tight"))


def token_label(text, width=12):
    """A token as an axis label: whitespace made visible (a leading space as '·', newlines as '\\n')."""
    s = str(text).replace("\n", "\\n").replace("\t", "\\t").replace(" ", "·")
    return s if len(s) <= width else s[:width - 1] + "…"


# Bad input is checked here, so that it raises one InvalidArgumentError naming the argument
# instead of a ValueError from deep inside matplotlib, or draws a figure of nonsense.
_SEQ = (list, tuple, range)


def _numbers(values, what, positive=False):
    """values as a list of floats; a list (or tuple) of real numbers is required."""
    if not isinstance(values, _SEQ):
        raise errors.InvalidArgumentError(f"{what} must be a list of numbers, got {type(values).__name__}; "
                                          "call .tolist() on a tensor")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise errors.InvalidArgumentError(f"{what} must hold numbers, got {v!r:.40}")
        if positive and not v > 0:
            raise errors.InvalidArgumentError(f"{what} must be positive, got {v!r}")
    return [float(v) for v in values]


def _same_length(values, n, what, of):
    if values is not None and (not isinstance(values, _SEQ) or len(values) != n):
        got = len(values) if isinstance(values, _SEQ) else type(values).__name__
        raise errors.InvalidArgumentError(f"{what} must list one entry per {of} ({n}), got {got}")
    return values


def _matrix(rows, what):
    if not rows or not isinstance(rows, _SEQ) or not all(isinstance(r, _SEQ) for r in rows):
        raise errors.InvalidArgumentError(f"{what} must be a non-empty list of rows (lists of numbers); call .tolist() on a tensor")
    n = len(rows[0])
    if any(len(r) != n for r in rows):
        raise errors.InvalidArgumentError(f"{what} rows differ in length")
    return [_numbers(r, f"{what} rows") for r in rows]


def _heatmap(ax, pattern, tokens, title, cmap="viridis", vmin=0.0, vmax=None, labels=True):
    m = _matrix(pattern, "pattern")
    if tokens is not None and (len(tokens) != len(m[0]) or len(tokens) != len(m)):
        raise errors.InvalidArgumentError(f"{len(tokens)} token labels for a {len(m)}x{len(m[0])} pattern")
    im = ax.imshow(m, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    if tokens is not None and labels:
        names = [token_label(t) for t in tokens]
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query")
    ax.set_title(title, fontsize=9)
    return im


def attention_pattern(pattern, tokens=None, layer=None, head=None, title=None):
    """Heatmap of one head's attention pattern [query][key] (rows sum to 1), labelled with tokens."""
    n = len(pattern) if pattern else 0
    side = min(max(3.0, 0.28 * n + 1.5), 14.0)
    fig = _figure(side + 0.8, side)
    ax = fig.add_subplot()
    where = " ".join(x for x in (f"layer {layer}" if layer is not None else "",
                                  f"head {head}" if head is not None else "") if x)
    im = _heatmap(ax, pattern, tokens, title or f"attention pattern {where}".strip(), vmax=1.0)
    fig.colorbar(im, ax=ax, shrink=0.8, label="attention weight")
    return fig


def attention_heads(patterns, tokens=None, layer=None, cols=None, title=None):
    """A grid of every head's pattern [head][query][key] of one layer; labels on the edge plots only."""
    if not patterns or not isinstance(patterns, _SEQ):
        raise errors.InvalidArgumentError("patterns must list at least one head [head][query][key]; "
                                          "call .tolist() on a tensor")
    patterns = [_matrix(p, f"patterns[{i}] (one head's [query][key])") for i, p in enumerate(patterns)]
    h = len(patterns)
    cols = cols or min(h, 3 if h <= 9 else 4)
    rows = math.ceil(h / cols)
    n = len(patterns[0])
    cell = min(max(2.2, 0.16 * n + 1.2), 5.0)
    fig = _figure(cols * cell + 0.6, rows * cell + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False)
    im = None
    for i in range(rows * cols):
        ax = axes[i // cols][i % cols]
        if i >= h:
            ax.set_axis_off()
            continue
        im = _heatmap(ax, patterns[i], tokens, f"head {i}", vmax=1.0, labels=n <= 40)
        if i % cols:
            ax.set_ylabel("")
            ax.set_yticklabels([])
        if i // cols != rows - 1 and i + cols < h:
            ax.set_xlabel("")
            ax.set_xticklabels([])
    fig.colorbar(im, ax=axes, shrink=0.6, label="attention weight")
    fig.suptitle(title or (f"layer {layer}: all heads" if layer is not None else "all heads"))
    return fig


def _events_to_rates(events):
    """(step index, tokens/s, phase) of TokenEvents, or of plain per-token seconds."""
    if not isinstance(events, _SEQ):
        raise errors.InvalidArgumentError(f"events must be a list of TokenEvents or of step seconds, got "
                                          f"{type(events).__name__}")
    out = []
    for i, e in enumerate(events):
        if isinstance(e, numbers.Real) and not isinstance(e, bool):
            sec, n, phase = float(e), 1, "decode" if i else "prefill"
        elif all(hasattr(e, a) for a in ("seconds", "n_input", "phase")):
            sec, n, phase = e.seconds, e.n_input, e.phase
        else:
            raise errors.InvalidArgumentError(f"events must be TokenEvents (stream(..., details=True)) or step "
                                              f"seconds, got {e!r:.40}")
        out.append((i, n / sec if sec > 0 else 0.0, phase))
    return out


def throughput_over_generation(events, title=None, cpu=None):
    """Decode tokens/s at each step of a generation (TokenEvents, or one step time in seconds each);
    the prefill rate (prompt tokens/s) is given in the legend, not plotted on the same scale."""
    pts = _events_to_rates(events)
    if not pts:
        raise errors.InvalidArgumentError("no generation steps to plot")
    fig = _figure(6.5, 3.2)
    ax = fig.add_subplot()
    dec = [(i, r) for i, r, ph in pts if ph == "decode"]
    pre = [r for _, r, ph in pts if ph == "prefill"]
    if dec:
        ax.plot([i for i, _ in dec], [r for _, r in dec], marker=".", lw=1, label="decode tokens/s")
        mean = len(dec) / sum(1 / r for _, r in dec if r > 0) if any(r > 0 for _, r in dec) else 0
        ax.axhline(mean, color="grey", ls="--", lw=0.8, label=f"overall {mean:.1f} tok/s")
    if pre:
        ax.plot([], [], " ", label=f"prefill {pre[0]:.0f} tok/s")
    ax.set_xlabel("generated token")
    ax.set_ylabel("tokens / s")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(_with_cpu(title or "throughput over a generation", cpu), fontsize=9)
    return fig


def _with_cpu(title, cpu):
    return f"{title}\n{cpu}" if cpu else title


def throughput_vs_prompt_length(lengths, prefill, decode=None, title=None, cpu=None):
    """Prefill (and decode) tokens/s against prompt length in tokens, log-scaled length axis."""
    lengths = _numbers(lengths, "lengths", positive=True)       # a log axis: no zero
    prefill, decode = _numbers(prefill, "prefill"), None if decode is None else _numbers(decode, "decode")
    if not lengths or len(lengths) != len(prefill) or (decode is not None and len(decode) != len(lengths)):
        raise errors.InvalidArgumentError("lengths, prefill (and decode) must be lists of the same, non-zero length")
    fig = _figure(6.0, 3.4)
    ax = fig.add_subplot()
    ax.plot(lengths, prefill, marker="o", label="prefill")
    if decode is not None:
        ax.plot(lengths, decode, marker="s", label="decode (after that prompt)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [f"{n:g}" for n in lengths])
    ax.set_xlabel("prompt length (tokens)")
    ax.set_ylabel("tokens / s")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(_with_cpu(title or "throughput vs prompt length", cpu), fontsize=9)
    return fig


def throughput_vs_batch_size(batch_sizes, tokens_per_s, per_sequence=None, title=None, cpu=None):
    """Total decode tokens/s (and optionally per sequence) against the number of sequences batched."""
    batch_sizes, tokens_per_s = _numbers(batch_sizes, "batch_sizes", positive=True), _numbers(tokens_per_s, "tokens_per_s")
    if not batch_sizes or len(batch_sizes) != len(tokens_per_s):
        raise errors.InvalidArgumentError("batch_sizes and tokens_per_s must be lists of the same, non-zero length")
    if per_sequence is not None:
        per_sequence = _numbers(_same_length(per_sequence, len(batch_sizes), "per_sequence", "batch size"),
                                "per_sequence")
    fig = _figure(6.0, 3.4)
    ax = fig.add_subplot()
    ax.plot(batch_sizes, tokens_per_s, marker="o", label="total tokens/s")
    if per_sequence is not None:
        ax.plot(batch_sizes, per_sequence, marker="s", label="per sequence")
    ax.set_xticks(batch_sizes, [f"{b:g}" for b in batch_sizes])
    ax.set_xlabel("batch size (sequences)")
    ax.set_ylabel("tokens / s")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(_with_cpu(title or "throughput vs batch size", cpu), fontsize=9)
    return fig


def layer_timing(names, seconds, parts=None, title=None, unit="ms"):
    """Bars of time per layer. `parts` = {label: [seconds per layer]} stacks sub-layer times (say
    attention and MLP) inside each bar; `seconds` is then the whole layer's time."""
    seconds = _numbers(seconds, "seconds")
    if not isinstance(names, _SEQ) or not names or len(names) != len(seconds):
        raise errors.InvalidArgumentError("names and seconds must be lists of the same, non-zero length")
    scale = {"s": 1.0, "ms": 1e3, "us": 1e6}
    if unit not in scale:
        raise errors.InvalidArgumentError(f"unit must be one of {sorted(scale)}, got {unit!r}")
    k = scale[unit]
    fig = _figure(max(5.0, 0.22 * len(names) + 2.0), 3.4)
    ax = fig.add_subplot()
    x = list(range(len(names)))
    if parts:
        bottom = [0.0] * len(names)
        for label, vals in parts.items():
            vals = _numbers(_same_length(vals, len(names), f"parts[{label!r}]", "layer"), f"parts[{label!r}]")
            v = [s * k for s in vals]
            ax.bar(x, v, bottom=bottom, label=label)
            bottom = [b + y for b, y in zip(bottom, v)]
        rest = [max(s * k - b, 0.0) for s, b in zip(seconds, bottom)]
        if any(r > 0 for r in rest):
            ax.bar(x, rest, bottom=bottom, label="other", color="lightgrey")
        ax.legend(fontsize=8)
    else:
        ax.bar(x, [s * k for s in seconds])
    ax.set_xticks(x, [str(n) for n in names], rotation=90 if len(names) > 12 else 0, fontsize=7)
    ax.set_xlabel("layer")
    ax.set_ylabel(f"time ({unit})")
    ax.set_title(title or "time per layer", fontsize=9)
    return fig


def logit_lens(top_tokens, probs, input_tokens=None, layer_names=None, title=None):
    """Logit-lens heatmap: rows are layers, columns positions; each cell is the probability of that
    layer's top prediction (annotated with its token when the grid is small enough to read)."""
    m = _matrix(probs, "probs")
    if len(top_tokens) != len(m) or any(len(r) != len(m[0]) for r in top_tokens):
        raise errors.InvalidArgumentError("top_tokens must have the shape of probs [layer][position]")
    layers, pos = len(m), len(m[0])
    _same_length(layer_names, layers, "layer_names", "layer")
    fig = _figure(min(max(4.0, 0.9 * pos + 2.0), 20.0), min(max(3.0, 0.3 * layers + 1.5), 14.0))
    ax = fig.add_subplot()
    im = ax.imshow(m, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest", origin="lower")
    if pos * layers <= 2000:
        for li in range(layers):
            for pi in range(pos):
                ax.text(pi, li, token_label(top_tokens[li][pi], 8), ha="center", va="center", fontsize=6,
                        color="white" if m[li][pi] > 0.5 else "black")
    ax.set_yticks(range(layers), [str(n) for n in (layer_names or range(layers))], fontsize=7)
    if input_tokens is not None:
        if len(input_tokens) != pos:
            raise errors.InvalidArgumentError(f"{len(input_tokens)} input tokens for {pos} positions")
        ax.set_xticks(range(pos), [token_label(t) for t in input_tokens], rotation=90, fontsize=7)
    ax.set_xlabel("input position")
    ax.set_ylabel("layer")
    fig.colorbar(im, ax=ax, shrink=0.8, label="probability of the top token")
    ax.set_title(title or "logit lens: top prediction per layer", fontsize=9)
    return fig


def logit_lens_figure(lens, input_tokens=None, title=None):
    """`logit_lens` of a LogitLens (what `cache.logit_lens()` returns: labels, tokens[c][pos][j],
    probs[c][pos][j]): each component's top-1 prediction per position."""
    tops = [[row[0] for row in comp] for comp in lens.tokens]
    probs = [[row[0] for row in comp] for comp in lens.probs]
    return logit_lens(tops, probs, input_tokens=input_tokens, layer_names=list(lens.labels), title=title)


def residual_norms(norms, layer_names=None, positions=None, title=None):
    """Residual-stream L2 norm by layer: `norms` is [layer] (one line) or [layer][position] (one line
    per position, labelled with `positions`, e.g. the tokens)."""
    if not norms or not isinstance(norms, _SEQ):
        raise errors.InvalidArgumentError("norms must list at least one layer; call .tolist() on a tensor")
    _same_length(layer_names, len(norms), "layer_names", "layer")
    if isinstance(norms[0], _SEQ):
        cols = _matrix(norms, "norms")
        _same_length(positions, len(cols[0]), "positions", "position")
    else:
        norms = _numbers(norms, "norms")
    fig = _figure(6.0, 3.4)
    ax = fig.add_subplot()
    x = list(range(len(norms)))
    if isinstance(norms[0], _SEQ):
        for p in range(len(cols[0])):
            label = token_label(positions[p]) if positions is not None else f"pos {p}"
            ax.plot(x, [r[p] for r in cols], marker=".", lw=1, label=label)
        if len(cols[0]) <= 12:
            ax.legend(fontsize=7, ncols=2)
    else:
        ax.plot(x, [float(v) for v in norms], marker="o")
    if layer_names is not None:
        ax.set_xticks(x, [str(n) for n in layer_names], rotation=90 if len(x) > 12 else 0, fontsize=7)
    ax.set_xlabel("layer")
    ax.set_ylabel("‖resid‖₂")
    ax.grid(alpha=0.3)
    ax.set_title(title or "residual stream norm by layer", fontsize=9)
    return fig


def save(fig, path, formats=("png", "svg"), dpi=120):
    """Writes fig as path.png and path.svg (path without a suffix); returns the file names."""
    supported = fig.canvas.get_supported_filetypes()
    bad = [f for f in formats if f not in supported]
    if isinstance(formats, str) or bad:
        raise errors.InvalidArgumentError(f"formats must be a list of {', '.join(sorted(supported))}; got {formats!r}")
    root, ext = os.path.splitext(str(path))
    if ext.lstrip(".") in ("png", "svg", "pdf"):
        path = root
    out = []
    for f in formats:
        name = f"{path}.{f}"
        fig.savefig(name, format=f, dpi=dpi)
        out.append(name)
    return out


def to_png(fig, dpi=100):
    """PNG bytes of a figure (widgets show these in an Image)."""
    from io import BytesIO

    buf = BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
