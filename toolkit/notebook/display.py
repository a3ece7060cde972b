"""Compact HTML (and plain-text) views of a model, an activation cache and a profile.

The classes belong to other layers, so instead of giving them `_repr_html_` this module provides
formatter functions that `%load_ext toolkit` registers with IPython's text/html formatter;
`register(ip)` does it by hand. Each view is also available as a function returning HTML, for
use anywhere (`display(HTML(model_html(m)))`).
"""
import html
import os
import re

_STYLE = ("<style>.tk-table{border-collapse:collapse;font-size:12px;margin:2px 0}"
          ".tk-table td,.tk-table th{padding:1px 8px;border-bottom:1px solid #ddd;text-align:left}"
          ".tk-table th{background:#f3f3f3}.tk-table td.num{text-align:right;font-variant-numeric:tabular-nums}"
          "</style>")

_ELSIZE = {"F32": 4, "F16": 2, "BF16": 2}


def fmt_bytes(n):
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def _table(rows, header=None, caption=None):
    """HTML table of rows (lists of cells); numbers are right-aligned."""
    out = [_STYLE, '<table class="tk-table">']
    if caption:
        out.append(f'<caption style="text-align:left;font-weight:bold">{html.escape(caption)}</caption>')
    if header:
        out.append("<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>")
    for r in rows:
        cells = []
        for c in r:
            cls = ' class="num"' if isinstance(c, (int, float)) and not isinstance(c, bool) else ""
            txt = f"{c:.3f}" if isinstance(c, float) else str(c)
            cells.append(f"<td{cls}>{html.escape(txt)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _text_table(rows, header=None):
    rows = [[f"{c:.3f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    if header:
        rows = [list(map(str, header))] + rows
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


# ---- model ----
_GROUPS = (("embed", r"embed"), ("attention", r"attn|attention|q_proj|k_proj|v_proj|o_proj"),
           ("mlp", r"mlp|gate|up_proj|down_proj|ffn"), ("norms", r"norm"), ("unembed", r"lm_head|output"))


def _group(name):
    if "norm" in name:  # before attention: "post_attention_layernorm"
        return "norms"
    for g, pat in _GROUPS:
        if re.search(pat, name):
            return g
    return "other"


def model_summary(model, load_seconds=None):
    """[(field, value)] describing a loaded toolkit.Model (what %tk_load shows)."""
    c = model.config
    groups = {}
    mapped = 0
    for name, p in model.model.named_parameters():
        g = groups.setdefault(_group(name), {})
        n, b = g.get(p.dtype, (0, 0))
        g[p.dtype] = (n + p.numel, b + p.nbytes)
        mapped += p.nbytes
    kv = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * _ELSIZE.get(c.kv_cache_dtype, 4)
    rows = [("model", os.path.basename(str(model.path).rstrip("/"))),
            ("architecture", f"Llama: {c.num_hidden_layers} layers, d_model {c.hidden_size}, "
                             f"{c.num_attention_heads} heads ({c.num_key_value_heads} KV) x {c.head_dim}, "
                             f"d_mlp {c.intermediate_size}"),
            ("vocab / context", f"{c.vocab_size} / {c.max_position_embeddings}"),
            ("parameters", f"{model.model.num_parameters() / 1e6:.1f}M")]
    for g, _ in _GROUPS + (("other", None),):
        if g in groups:
            rows.append((f"weights: {g}", ", ".join(f"{dt} {fmt_bytes(b)}" for dt, (n, b) in
                                                    sorted(groups[g].items(), key=lambda kv: -kv[1][1]))))
    rows.append(("bytes mapped", f"{fmt_bytes(mapped)} ({mapped:,} B)"))
    rows.append(("KV cache per token", f"{fmt_bytes(kv)} ({c.kv_cache_dtype})"))
    if load_seconds is not None:
        rows.append(("load time", f"{load_seconds * 1e3:.0f} ms"))
    return rows


def model_html(model, load_seconds=None):
    from .session import is_open

    if not is_open(model):
        return f"<code>{html.escape(repr(model))}</code>"
    return _table(model_summary(model, load_seconds), caption="toolkit.Model")


def model_text(model, load_seconds=None):
    return _text_table(model_summary(model, load_seconds))


class Summary:
    """Shows a table as HTML in a notebook and as aligned text elsewhere."""

    def __init__(self, rows, header=None, caption=None):
        self.rows, self.header, self.caption = rows, header, caption

    def _repr_html_(self):
        return _table(self.rows, self.header, self.caption)

    def __repr__(self):
        text = _text_table(self.rows, self.header)
        return f"{self.caption}\n{text}" if self.caption else text


# ---- activation cache ----
def cache_rows(cache, limit=40):
    names = list(cache.keys())
    shown = names if len(names) <= limit else names[:limit - 5] + [None] + names[-5:]
    rows = []
    for n in shown:
        if n is None:
            rows.append((f"... {len(names) - limit + 1} more ...", "", "", ""))
            continue
        t = cache[n]
        rows.append((n, "x".join(map(str, t.shape)), t.dtype, fmt_bytes(t.nbytes)))
    return names, rows


def cache_html(cache):
    names, rows = cache_rows(cache)
    return _table(rows, ("hook", "shape", "dtype", "size"),
                  caption=f"ActivationCache: {len(names)} activations, {fmt_bytes(cache.nbytes)}")


def cache_text(cache):
    names, rows = cache_rows(cache)
    return f"ActivationCache: {len(names)} activations, {fmt_bytes(cache.nbytes)}\n" + _text_table(
        rows, ("hook", "shape", "dtype", "size"))


# ---- profile ----
def profile_rows(prof, top=12):
    """(per-op rows, per-layer rows) of a profile, slowest ops first, layers in order."""
    ops = []
    for name, r in list(prof.by_op().items())[:top]:
        ops.append((name, r["calls"], round(r["seconds"] * 1e3, 3), f"{100 * r['share']:.1f}%",
                    round(r["gb_per_s"], 1), round(r["gflop_per_s"], 1)))
    layers = []
    for name, r in prof.by_layer().items():
        if re.fullmatch(r"blocks\.\d+|embed|ln_final|unembed|\(outside modules\)", name):
            sec = r["seconds"] if r["seconds"] is not None else r["op_seconds"]
            layers.append((name, r["calls"], round(sec * 1e3, 3), round(r["op_seconds"] * 1e3, 3)))
    return ops, layers


def profile_html(prof):
    ops, layers = profile_rows(prof)
    head = html.escape(prof.table(layers=False).splitlines()[0]) if hasattr(prof, "table") else "profile"
    return (f"<div><b>{head}</b></div><div style='display:flex;gap:24px;align-items:flex-start'>"
            + _table(ops, ("op", "calls", "ms", "share", "GB/s", "GFLOP/s"), caption="by op")
            + _table(layers, ("region", "calls", "wall ms", "ops ms"), caption="by layer") + "</div>")


# ---- registration ----
def register_type(fmt, cls, fn):
    """Has IPython formatter `fmt` show instances of cls with fn, unless cls has its own _repr_html_."""
    if cls is not None and not hasattr(cls, "_repr_html_"):
        fmt.for_type(cls, fn)


def register(ip, cache_type=None, profile_type=None):
    """Registers the HTML views with IPython `ip`: the model and the activation cache; the profile's
    type when given (it lives in the engine layer, which this layer does not import: %tk_profile
    registers it from the first profile it makes)."""
    from toolkit.api import Model
    from toolkit.interp import ActivationCache

    fmt = ip.display_formatter.formatters["text/html"]
    register_type(fmt, Model, model_html)
    register_type(fmt, cache_type or ActivationCache, cache_html)
    register_type(fmt, profile_type, profile_html)


def unregister(ip):
    from toolkit.api import Model

    fmt = ip.display_formatter.formatters["text/html"]
    for cls in [Model] + [c for c, f in list(fmt.type_printers.items()) if f in (cache_html, profile_html)]:
        fmt.type_printers.pop(cls, None)
