"""plots.py with the Agg backend: axes, token labels, image data, and PNG + SVG output."""
import pytest

from toolkit import errors
from toolkit.common.generation import TokenEvent
from toolkit.notebook import plots

TOKENS = ["The", " cat", " sat", "\n"]


def causal(n, head=0):
    return [[(1.0 / (q + 1) if k <= q else 0.0) if head % 2 == 0 else float(k == q) for k in range(n)]
            for q in range(n)]


def labels(ax, axis="x"):
    return [t.get_text() for t in (ax.get_xticklabels() if axis == "x" else ax.get_yticklabels())]


def test_attention_pattern(tmp_path):
    fig = plots.attention_pattern(causal(4), TOKENS, layer=3, head=1)
    ax = fig.axes[0]
    assert labels(ax) == ["The", "·cat", "·sat", "\\n"] == labels(ax, "y")
    data = ax.images[0].get_array()
    assert data.shape == (4, 4) and data[1][0] == pytest.approx(0.5) and data[0][3] == 0
    assert ax.get_title() == "attention pattern layer 3 head 1"
    png, svg = plots.save(fig, tmp_path / "attn")
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n" and "<svg" in open(svg).read(2000)


def test_attention_heads_grid():
    fig = plots.attention_heads([causal(4, h) for h in range(9)], TOKENS, layer=2)
    panels = [a for a in fig.axes if a.images]
    assert len(panels) == 9 and [a.get_title() for a in panels] == [f"head {h}" for h in range(9)]
    assert all(a.images[0].get_array().shape == (4, 4) for a in panels)
    assert labels(panels[-1]) == ["The", "·cat", "·sat", "\\n"]
    assert fig._suptitle.get_text() == "layer 2: all heads"


def test_throughput_over_generation():
    events = [TokenEvent(1, "a", 0.5, -0.7, [], 0.05, "prefill", 0, 10)] + [
        TokenEvent(1, "a", 0.5, -0.7, [], 0.02, "decode", i, 1) for i in range(1, 6)]
    fig = plots.throughput_over_generation(events, cpu="Test CPU")
    ax = fig.axes[0]
    x, y = ax.lines[0].get_data()
    assert list(x) == [1, 2, 3, 4, 5] and list(y) == pytest.approx([50.0] * 5)
    assert "prefill 200 tok/s" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert ax.get_title().endswith("Test CPU") and ax.get_ylabel() == "tokens / s"


def test_throughput_vs_prompt_length_and_batch():
    fig = plots.throughput_vs_prompt_length([16, 64, 256], [400.0, 900.0, 1100.0], [60.0, 58.0, 50.0])
    ax = fig.axes[0]
    assert [list(line.get_xdata()) for line in ax.lines] == [[16, 64, 256]] * 2
    assert labels(ax) == ["16", "64", "256"] and ax.get_xlabel() == "prompt length (tokens)"
    fig = plots.throughput_vs_batch_size([1, 2, 4], [60.0, 110.0, 190.0], per_sequence=[60.0, 55.0, 47.5])
    assert list(fig.axes[0].lines[1].get_ydata()) == [60.0, 55.0, 47.5]
    with pytest.raises(errors.InvalidArgumentError):
        plots.throughput_vs_batch_size([1, 2], [1.0])


def test_layer_timing_bars():
    fig = plots.layer_timing(list(range(30)), [0.002] * 30, parts={"attention": [0.0008] * 30, "mlp": [0.001] * 30})
    ax = fig.axes[0]
    assert len(ax.patches) == 90                    # attention, mlp and the rest, per layer
    assert ax.patches[0].get_height() == pytest.approx(0.8) and ax.get_ylabel() == "time (ms)"
    assert labels(ax)[:3] == ["0", "1", "2"]


def test_logit_lens_heatmap():
    tops = [["Paris", " the", "."], [" Paris", " France", "."]]
    probs = [[0.1, 0.2, 0.3], [0.9, 0.5, 0.6]]
    fig = plots.logit_lens(tops, probs, input_tokens=["The", " capital", " is"], layer_names=["10", "29"])
    ax = fig.axes[0]
    assert ax.images[0].get_array().shape == (2, 3)
    assert labels(ax) == ["The", "·capital", "·is"] and labels(ax, "y") == ["10", "29"]
    assert [t.get_text() for t in ax.texts] == ["Paris", "·the", ".", "·Paris", "·France", "."]
    with pytest.raises(errors.InvalidArgumentError):
        plots.logit_lens([["a"]], [[0.1, 0.2]])


def test_logit_lens_figure_from_a_lens():
    class Lens:  # the shape of cache.logit_lens(): components x positions x k
        labels = ["0_pre", "final_post"]
        tokens = [[["a", "b"], ["c", "d"]], [["e", "f"], ["g", "h"]]]
        probs = [[[0.5, 0.1], [0.4, 0.3]], [[0.9, 0.05], [0.8, 0.1]]]

    fig = plots.logit_lens_figure(Lens(), input_tokens=["x", "y"])
    ax = fig.axes[0]
    assert ax.images[0].get_array().tolist() == [[0.5, 0.4], [0.9, 0.8]]
    assert [t.get_text() for t in ax.texts] == ["a", "c", "e", "g"] and labels(ax, "y") == ["0_pre", "final_post"]


def test_residual_norms():
    fig = plots.residual_norms([1.0, 2.0, 4.0])
    assert list(fig.axes[0].lines[0].get_ydata()) == [1.0, 2.0, 4.0]
    fig = plots.residual_norms([[1.0, 2.0], [3.0, 4.0]], positions=["The", " cat"])
    ax = fig.axes[0]
    assert len(ax.lines) == 2 and [t.get_text() for t in ax.get_legend().get_texts()] == ["The", "·cat"]


def test_bad_shapes_are_typed_errors():
    with pytest.raises(errors.InvalidArgumentError, match="token labels"):
        plots.attention_pattern(causal(3), TOKENS)
    with pytest.raises(errors.InvalidArgumentError, match="tolist"):
        plots.attention_pattern([1.0, 2.0])


def test_a_returned_figure_displays_as_an_image_without_pyplot(shell):
    # no `%matplotlib inline` and no pyplot import: the Figure must still show as a picture, not as
    # '<Figure size ...>' text
    fig = plots.residual_norms([1.0, 2.0, 3.0])
    data, _ = shell.display_formatter.format(fig)
    assert data["image/png"][:8] == b"\x89PNG\r\n\x1a\n"


def _tensor(rows):
    from toolkit.core.engine.backend import Tensor

    return Tensor.from_list(rows)


@pytest.mark.parametrize("draw", [
    lambda: plots.attention_pattern([["a", "b"], ["c", "d"]]),
    lambda: plots.attention_pattern([[[1.0]]]),
    lambda: plots.attention_heads([[0.5, 0.5], [0.3, 0.7]]),
    lambda: plots.throughput_over_generation("abc"),
    lambda: plots.throughput_over_generation([object()]),
    lambda: plots.throughput_vs_prompt_length(_tensor([16.0, 64.0]), [100.0, 200.0]),
    lambda: plots.throughput_vs_prompt_length(["a", "b"], [100.0, 200.0]),
    lambda: plots.throughput_vs_prompt_length([0, 64], [100.0, 200.0]),
    lambda: plots.throughput_vs_batch_size([1, 2], [1.0, 2.0], [1.0]),
    lambda: plots.layer_timing([0, 1], [0.1, 0.2], unit="min"),
    lambda: plots.layer_timing([0, 1], [0.1, "x"]),
    lambda: plots.logit_lens([["a"], ["b"]], [[0.5], [0.2]], layer_names=["x"]),
    lambda: plots.residual_norms(_tensor([[1.0, 2.0]])),
    lambda: plots.residual_norms([1.0, 2.0], layer_names=["a"]),
    lambda: plots.residual_norms([[1.0, 2.0]], positions=["a"]),
    lambda: plots.save(plots.residual_norms([1.0, 2.0]), "unused", formats=("xyz",)),
], ids=["pattern-strings", "pattern-3d", "heads-2d", "events-str", "events-objects", "lengths-tensor",
        "lengths-strings", "lengths-zero", "per-sequence-length", "unit", "seconds-str", "layer-names",
        "norms-tensor", "norms-layer-names", "norms-positions", "save-format"])
def test_bad_input_to_a_plot_is_one_typed_error(draw):
    # never a ValueError / IndexError / KeyError from inside matplotlib or a figure of nonsense
    with pytest.raises(errors.InvalidArgumentError):
        draw()
