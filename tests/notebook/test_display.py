"""HTML and plain-text views of a model, an activation cache and a profile."""
from nb_fakes import FakeCache, FakePattern, FakeProfile
from toolkit.notebook import display


def test_model_summary(model):
    rows = dict(display.model_summary(model, load_seconds=0.25))
    assert rows["parameters"] == "134.5M" and rows["load time"] == "250 ms"
    assert rows["weights: mlp"].startswith("Q4_1") and rows["weights: embed"].startswith("Q8_0")
    assert rows["weights: norms"].startswith("F32") and "F32" not in rows["weights: attention"]
    mapped = sum(p.nbytes for _, p in model.model.named_parameters())
    assert f"({mapped:,} B)" in rows["bytes mapped"]
    assert "<table" in display.model_html(model) and "KV cache per token" in display.model_text(model)


def test_cache_views():
    cache = FakeCache({f"blocks.{i}.attn.hook_pattern": FakePattern(9, 4, i) for i in range(50)})
    cache.nbytes = sum(t.nbytes for t in cache.values())
    page, text = display.cache_html(cache), display.cache_text(cache)
    assert "50 activations" in page and "50 activations" in text
    assert "blocks.0.attn.hook_pattern" in page and "9x4x4" in page
    assert "... 11 more ..." in text and "blocks.49.attn.hook_pattern" in text   # long caches are cut


def test_profile_view():
    page = display.profile_html(FakeProfile())
    assert "profile: 40.00 ms wall" in page and "matmul" in page and "75.0%" in page
    assert "blocks.2" in page and "blocks.2.attn" not in page     # layers, not every sub-region


def test_summary_is_html_and_text():
    s = display.Summary([("a", 1), ("bb", 2.5)], header=("k", "v"), caption="cap")
    assert "<td class=\"num\">2.500</td>" in s._repr_html_()
    assert repr(s).splitlines() == ["cap", "k   v", "a   1", "bb  2.500"]


def test_a_closed_model_shows_as_closed(smollm2_gguf_path):
    import toolkit

    m = toolkit.load(smollm2_gguf_path)
    m.close()
    assert "closed" in display.model_html(m)
