"""AttentionExplorer: a prompt, layer and head selectors, and the attention pattern as a heatmap.

The patterns come from `model.run_with_cache` (one forward pass per prompt and layer, kept, so
moving the head selector only redraws). The heatmap is a PNG in an `Image` widget, which also
serves as the static fallback where widgets do not render.
"""
import base64
import html

import ipywidgets as W
import traitlets as T

from toolkit import errors

from . import plots, session

ALL_HEADS = -1
KEEP = 4    # (prompt, layer) patterns kept: Python floats, ~70 MB each at 500 tokens


class AttentionExplorer(session.StaticView, W.VBox):
    """`display(AttentionExplorer(m, "The cat sat on the mat"))`; head = -1 shows every head."""

    prompt = T.Unicode("")
    layer = T.Int(0)
    head = T.Int(ALL_HEADS)
    status = T.Unicode("")

    def __init__(self, model, prompt="", layer=0, head=ALL_HEADS):
        self.model = session.check_model(model, "AttentionExplorer", "run_with_cache")
        self._patterns = {}             # (prompt, layer) -> (tokens, [head][q][k])
        self.figure = None
        c = model.config
        # a forward pass and a redraw per update: on Enter (or leaving the box), on releasing the slider
        self._prompt = W.Text(placeholder="Prompt (Enter to run)", continuous_update=False, layout=W.Layout(width="60%"))
        self._layer = W.IntSlider(min=0, max=c.num_hidden_layers - 1, description="layer", continuous_update=False)
        self._head = W.Dropdown(options=[("all heads", ALL_HEADS)] + [(f"head {h}", h)
                                                                     for h in range(c.num_attention_heads)],
                                description="head")
        self._status = W.Label("")
        self._image = W.Image(format="png", layout=W.Layout(max_width="100%"))
        T.link((self._prompt, "value"), (self, "prompt"))
        T.link((self._layer, "value"), (self, "layer"))
        T.link((self._head, "value"), (self, "head"))
        T.dlink((self, "status"), (self._status, "value"))
        super().__init__([W.HBox([self._prompt, self._layer, self._head]), self._status, self._image])
        with session.typed_traits("AttentionExplorer"):
            self.layer, self.head = layer, head
            self.prompt = prompt
        self.observe(lambda _: self.refresh(), ["prompt", "layer", "head"])
        if prompt:
            self.refresh()

    @T.validate("layer")
    def _valid_layer(self, proposal):
        return session.check_layer(self.model, proposal["value"])

    @T.validate("head")
    def _valid_head(self, proposal):
        h = proposal["value"]
        return ALL_HEADS if h == ALL_HEADS else session.check_head(self.model, h)

    def patterns(self):
        """(tokens, [head][query][key]) of the current prompt and layer."""
        key = (self.prompt, self.layer)
        if key not in self._patterns:
            self._patterns[key] = session.attention_patterns(self.model, self.prompt, self.layer)
            while len(self._patterns) > KEEP:
                del self._patterns[next(iter(self._patterns))]       # the oldest
        return self._patterns[key]

    def refresh(self):
        """Redraws for the current prompt / layer / head; errors go to the status line."""
        if not self.prompt.strip():
            self.status = "enter a prompt"
            return None
        try:
            session.check_layer(self.model, self.layer)
            tokens, pats = self.patterns()
            if self.head == ALL_HEADS:
                fig = plots.attention_heads(pats, tokens, layer=self.layer)
            else:
                h = session.check_head(self.model, self.head)
                fig = plots.attention_pattern(pats[h], tokens, layer=self.layer, head=h)
        except errors.ToolkitError as exc:
            self.status = f"error: {exc}"
            return None
        self.figure = fig
        self._image.value = plots.to_png(fig, dpi=90)
        heads = "all heads" if self.head == ALL_HEADS else f"head {self.head}"
        self.status = f"layer {self.layer}, {heads}: {len(tokens)} tokens"
        self.update_static()
        return fig

    def _repr_mimebundle_(self, **kwargs):
        data = super()._repr_mimebundle_(**kwargs)
        if self._image.value:
            b64 = base64.b64encode(self._image.value).decode()
            data["text/html"] = f'<img src="data:image/png;base64,{b64}"/><div><small>{html.escape(self.status)}</small></div>'
        return data
