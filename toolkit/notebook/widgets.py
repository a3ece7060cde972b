"""GenerationWidget: prompt, sampling controls, Generate / Stop, text streaming in live.

State lives in traitlets on the widget (prompt, chat, temperature, top_p, top_k, max_new_tokens,
seed, shade; and the outputs text, n_tokens, tokens_per_s, running, status), linked to the
controls, so code and tests drive it exactly as a user does: set a trait or click a button.
Generation runs in a background thread, so the notebook stays usable; Stop takes effect before
the next token. The model's lock (see `session`) keeps two widgets on one model apart.
"""
import html
import threading
import time

import ipywidgets as W
import traitlets as T

from toolkit import errors

from . import session


def _esc(s):
    return html.escape(s, quote=True)


def token_spans(events, shade=True):
    """HTML of a generation's tokens: each a <span> whose title lists the token's probability and
    the top alternatives, shaded (when `shade`) the more the less likely the model found it."""
    out = []
    for e in events:
        if not e.text and not e.eos:
            continue
        alts = "\n".join(f"{t!r}  {p:.3f}" for _, t, p in e.top)
        title = f"{e.text!r}  p={e.prob:.3f}  logprob={e.logprob:.2f}" + (f"\ntop:\n{alts}" if alts else "")
        style = f"background:rgba(255,140,0,{0.75 * (1 - e.prob):.2f});border-radius:2px" if shade else ""
        out.append(f'<span class="tk-tok" style="{style}" title="{_esc(title)}">{_esc(e.text)}</span>')
    return "".join(out)


def rate_line(events, running=False, stopped=False):
    dec = [e for e in events if e.phase == "decode"]
    pre = [e for e in events if e.phase == "prefill"]
    n = sum(1 for e in events if not e.eos)
    parts = [f"{n} tokens"]
    ds = sum(e.seconds for e in dec)
    if dec and ds > 0:
        parts.append(f"{len(dec) / ds:.1f} tok/s")
    if pre and pre[0].seconds > 0:
        parts.append(f"prefill {pre[0].n_input} tokens at {pre[0].n_input / pre[0].seconds:.0f} tok/s")
    parts.append("generating..." if running else "stopped" if stopped else "done")
    return " · ".join(parts)


class GenerationWidget(session.StaticView, W.VBox):
    """An interactive generation panel for a `toolkit.Model`; `display(GenerationWidget(m))`."""

    # inputs
    prompt = T.Unicode("")
    chat = T.Bool(False)
    temperature = T.Float(0.7)
    top_p = T.Float(0.95)
    top_k = T.Int(40)
    max_new_tokens = T.Int(128)
    seed = T.Int(None, allow_none=True)   # None: a fresh draw each time
    shade = T.Bool(False)
    # outputs
    text = T.Unicode("")                 # the reply being generated
    n_tokens = T.Int(0)
    tokens_per_s = T.Float(0.0)          # decode rate so far
    running = T.Bool(False)
    status = T.Unicode("")

    def __init__(self, model, prompt="", **settings):
        self.model = session.check_model(model, "GenerationWidget", "stream")
        self.conversation = []           # chat turns so far: [{"role", "content"}]
        self.events = []                 # TokenEvents of the latest generation
        self._stop = threading.Event()
        # set while no generation runs. Waits go through it, not Thread.join: an interrupted join
        # (Ctrl-C) leaves CPython 3.11's Thread claiming to have ended while it still runs
        self._idle = threading.Event()
        self._idle.set()
        self._thread = None
        self._last_render = 0.0
        ctx = model.config.max_position_embeddings
        self._prompt = W.Textarea(placeholder="Prompt", layout=W.Layout(width="100%", height="5em"))
        self._chat = W.Checkbox(description="chat template (keeps the conversation)", indent=False)
        self._shade = W.Checkbox(description="shade tokens by probability", indent=False)
        style = {"description_width": "9em"}
        self._temperature = W.FloatSlider(min=0.0, max=2.0, step=0.05, description="temperature", style=style)
        self._top_p = W.FloatSlider(min=0.05, max=1.0, step=0.01, description="top-p", style=style)
        self._top_k = W.IntSlider(min=0, max=200, description="top-k (0 = off)", style=style)
        self._max = W.IntSlider(min=1, max=min(2048, ctx), description="max new tokens", style=style)
        self._seed = W.Text(placeholder="random", description="seed", style=style, layout=W.Layout(width="16em"))
        self._go = W.Button(description="Generate", button_style="primary", icon="play")
        self._halt = W.Button(description="Stop", button_style="warning", icon="stop", disabled=True)
        self._clear = W.Button(description="New conversation", icon="eraser", layout=W.Layout(width="auto"))
        self._status = W.Label("")
        self._out = W.HTML("", layout=W.Layout(width="100%", min_height="3em"))
        self._seed.observe(self._seed_typed, "value")
        self.observe(self._seed_set, "seed")
        self.observe(lambda _: self.render(force=True), ["shade", "chat"])
        self._go.on_click(lambda _: self.generate())
        self._halt.on_click(lambda _: self.stop())
        self._clear.on_click(lambda _: self.clear())
        self.observe(self._on_running, "running")
        controls = W.HBox([W.VBox([self._temperature, self._top_p, self._top_k, self._max]),
                           W.VBox([self._seed, self._chat, self._shade])])
        super().__init__([self._prompt, controls, W.HBox([self._go, self._halt, self._clear, self._status]),
                          self._out])
        # the widget's traits are the source: a link first copies its source into its target
        for ctl, name in ((self._prompt, "prompt"), (self._chat, "chat"), (self._shade, "shade"),
                          (self._temperature, "temperature"), (self._top_p, "top_p"), (self._top_k, "top_k"),
                          (self._max, "max_new_tokens")):
            T.link((self, name), (ctl, "value"))
        T.dlink((self, "status"), (self._status, "value"))
        with session.typed_traits("GenerationWidget"):
            self.prompt = prompt
            for k, v in settings.items():
                if not self.has_trait(k) or k in ("text", "n_tokens", "tokens_per_s", "running", "status"):
                    raise errors.ArgumentTypeError(f"GenerationWidget has no setting {k!r}")
                setattr(self, k, v)
        self.add_class("tk-generation")

    # ---- settings ----
    @T.validate("temperature", "top_p", "top_k", "max_new_tokens")
    def _clamp(self, proposal):
        # as the sliders do, so the trait and its control never disagree
        ctl = {"temperature": self._temperature, "top_p": self._top_p, "top_k": self._top_k,
               "max_new_tokens": self._max}[proposal["trait"].name]
        return min(max(proposal["value"], ctl.min), ctl.max)

    def _seed_typed(self, change):
        s = change["new"].strip()
        try:
            self.seed = int(s) if s else None
        except ValueError:
            self.status = f"seed must be a whole number, got {s!r}"

    def _seed_set(self, change):
        v = "" if change["new"] is None else str(change["new"])
        if self._seed.value.strip() != v:
            self._seed.value = v

    def settings(self):
        """The sampling settings the next Generate passes to the model."""
        return dict(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                    top_k=self.top_k, seed=self.seed)

    def _on_running(self, change):
        self._go.disabled = change["new"]
        self._halt.disabled = not change["new"]

    # ---- actions ----
    def generate(self, wait=False):
        """Starts generating in a background thread (returned); wait=True joins it first."""
        if self.running:
            self.status = "already generating: Stop first"
            return self._thread
        prompt = self.prompt
        if not prompt.strip():
            self.status = "enter a prompt first"
            return None
        turn = None
        try:
            if self.chat:
                turn = {"role": "user", "content": prompt}
                text_prompt = self.model.apply_chat_template(self.conversation + [turn], add_generation_prompt=True)
            else:
                text_prompt = prompt
            settings = self.settings()
        except errors.ToolkitError as exc:
            self.status = f"error: {exc}"
            return None
        self._stop.clear()
        self._idle.clear()
        self.events, self.text, self.n_tokens, self.tokens_per_s = [], "", 0, 0.0
        self._shown_prompt = None if self.chat else prompt
        self._pending_turn = turn
        self.running = True
        self.status = "generating..."
        self.render(force=True)
        self._thread = threading.Thread(target=self._run, args=(text_prompt, settings, turn), daemon=True,
                                        name="tk-generation")
        self._thread.start()
        if wait:
            try:
                self._idle.wait()
            except KeyboardInterrupt:
                # the cell was interrupted: the generation it waited for stops too, then the
                # interrupt goes on (the cell fails, Run All stops)
                self.stop()
                self._idle.wait()
                raise
        return self._thread

    def stop(self):
        """Ends the generation before its next token."""
        self._stop.set()

    def wait(self, timeout=None):
        """Until the current generation ends (or timeout seconds); True if none is running."""
        return self._idle.wait(timeout)

    def clear(self):
        """Forgets the conversation and the output."""
        if self.running:
            self.stop()
            self.wait()
        self.conversation, self.events, self.text, self.n_tokens = [], [], "", 0
        self.status = ""
        self.render(force=True)

    def _run(self, prompt, settings, turn):
        stopped = failed = False
        dec_n, dec_s = 0, 0.0  # decode steps so far and their seconds (running sums: O(1) a token)
        try:
            for ev in session.stream_events(self.model, prompt, stop=self._stop, top=5, **settings):
                self.events.append(ev)
                self.text += ev.text
                if not ev.eos:
                    self.n_tokens += 1
                if ev.phase == "decode":
                    dec_n, dec_s = dec_n + 1, dec_s + ev.seconds
                    self.tokens_per_s = dec_n / dec_s if dec_s > 0 else 0.0
                self.status = f"{self.n_tokens} tokens · {self.tokens_per_s:.1f} tok/s · generating..."
                self.render()
            stopped = self._stop.is_set()
        except errors.ToolkitError as exc:
            failed = True
            self.status = f"error: {exc}"
        except Exception as exc:  # the thread must always leave `running`; show the bug, do not hide it
            failed = True
            self.status = f"error: {type(exc).__name__}: {exc}"
            raise
        finally:
            if turn is not None and not failed:
                self.conversation += [turn, {"role": "assistant", "content": self.text}]
            self._pending_turn = None
            if not failed:
                self.status = rate_line(self.events, stopped=stopped)
            self.running = False
            try:
                self.render(force=True)
                self.update_static()
            finally:
                self._idle.set()

    def throughput_figure(self):
        """Tokens/s at each step of the latest generation (a matplotlib Figure)."""
        from . import plots

        return plots.throughput_over_generation(self.events)

    # ---- view ----
    def to_html(self):
        """The transcript as HTML (what the output shows)."""
        turns = []
        if self.chat:
            for t in self.conversation:
                who = "you" if t["role"] == "user" else "model"
                turns.append(f"<div><b>{who}:</b> {_esc(t['content'])}</div>")
            pending = getattr(self, "_pending_turn", None)
            if pending is not None:
                turns.append(f"<div><b>you:</b> {_esc(pending['content'])}</div>")
            if self.running or pending is not None:
                turns.append(f"<div><b>model:</b> {token_spans(self.events, self.shade)}</div>")
        else:
            shown = getattr(self, "_shown_prompt", None)
            head = f'<span style="color:#777">{_esc(shown)}</span>' if shown else ""
            turns.append(f"<div>{head}{token_spans(self.events, self.shade)}</div>")
        return ('<div class="tk-output" style="white-space:pre-wrap;font-family:var(--jp-code-font-family,'
                'monospace);font-size:13px;line-height:1.5">' + "".join(turns) + "</div>")

    def render(self, force=False):
        """Pushes the transcript to the output; at most every 50 ms while streaming."""
        now = time.monotonic()
        if force or now - self._last_render >= 0.05:
            self._last_render = now
            self._out.value = self.to_html()

    def _repr_mimebundle_(self, **kwargs):
        # static fallback: where widgets cannot render (nbconvert, GitHub), the transcript as HTML
        data = super()._repr_mimebundle_(**kwargs)
        data["text/html"] = self.to_html() + f"<div><small>{_esc(self.status)}</small></div>"
        return data
