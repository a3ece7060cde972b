"""The widgets driven without a browser: traitlets set, buttons clicked, as a front end would."""
import threading

import pytest

from nb_fakes import InterpModel
from toolkit.notebook import AttentionExplorer, GenerationWidget

PROMPT = "The capital of France is"


class Spy:
    """The model, recording what each stream() call asked for."""

    def __init__(self, model):
        self._m = model
        self.calls = []

    def __getattr__(self, name):
        return getattr(self._m, name)

    def stream(self, prompt, **kwargs):
        self.calls.append((prompt, kwargs))
        return self._m.stream(prompt, **kwargs)


def test_generate_streams_into_the_output(model):
    w = GenerationWidget(model, prompt=PROMPT, temperature=0.0, max_new_tokens=12)
    seen = []
    w.observe(lambda ch: seen.append(ch["new"]), "text")
    w._go.click()                        # as the front end's click arrives
    assert w.running or w.n_tokens > 0
    w.wait(60)
    assert not w.running
    expected = model.generate(PROMPT, max_new_tokens=12, temperature=0.0)
    assert w.text == expected and w.n_tokens == 12
    assert len(seen) >= 12 and seen[-1] == expected and all(expected.startswith(s) for s in seen)
    assert "Paris" in w._out.value and PROMPT in w._out.value
    assert w.tokens_per_s > 0 and w.status.startswith("12 tokens · ") and w.status.endswith("done")
    assert w._go.disabled is False and w._halt.disabled is True
    fig = w.throughput_figure()
    assert len(fig.axes[0].lines[0].get_xdata()) == 11          # the decode steps


def test_browser_click_message_starts_generation(model):
    w = GenerationWidget(model, prompt=PROMPT, temperature=0.0, max_new_tokens=3)
    w._go._handle_custom_msg({"event": "click"}, [])
    w.wait(60)
    assert w.text.startswith(" Paris")


def test_stop_ends_within_one_token(model):
    w = GenerationWidget(model, prompt=PROMPT, temperature=0.0, max_new_tokens=200)
    # stop as the third token lands (inside the generation thread): no fourth token may follow
    w.observe(lambda ch: ch["new"] == 3 and w._halt.click(), "n_tokens")
    w.generate(wait=True)
    assert w.n_tokens == 3 and w.status.endswith("stopped")
    # and from the notebook's thread while it runs: at most the token in flight follows
    w.unobserve_all("n_tokens")
    got = threading.Event()
    w.observe(lambda ch: ch["new"] >= 2 and got.set(), "n_tokens")
    w.generate()
    assert got.wait(60)
    at_click = w.n_tokens
    w._halt.click()
    w.wait(60)
    assert at_click <= w.n_tokens <= at_click + 1 < 200


def test_each_setting_reaches_the_sampler(model):
    spy = Spy(model)
    w = GenerationWidget(spy, prompt=PROMPT)
    defaults = dict(max_new_tokens=128, temperature=0.7, top_p=0.95, top_k=40, seed=None)
    assert w.settings() == defaults     # the controls start at the widget's defaults, not theirs
    assert (w._temperature.value, w._top_p.value, w._top_k.value, w._max.value, w._seed.value) == (
        0.7, 0.95, 40, 128, "")
    w._temperature.value = 1.3           # through the controls, as a user moves them
    w._top_p.value = 0.8
    w._top_k.value = 17
    w._max.value = 9
    w._seed.value = "1234"
    w.generate(wait=True)
    prompt, kw = spy.calls[-1]
    assert prompt == PROMPT
    assert kw["temperature"] == pytest.approx(1.3) and kw["top_p"] == pytest.approx(0.8)
    assert (kw["top_k"], kw["max_new_tokens"], kw["seed"], kw["details"]) == (17, 9, 1234, True)
    # and they change what is sampled: the same settings through generate() give the same text
    assert w.text == model.generate(PROMPT, max_new_tokens=9, temperature=1.3, top_p=0.8, top_k=17, seed=1234)
    w._seed.value = ""
    assert w.seed is None
    w._seed.value = "x1"
    assert w.seed is None and "seed must be a whole number" in w.status


def test_chat_keeps_the_conversation(model):
    spy = Spy(model)
    w = GenerationWidget(spy, prompt="Hi", chat=True, temperature=0.0, max_new_tokens=24)
    w.generate(wait=True)
    first = w.text
    assert w.conversation == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": first}]
    w.prompt = "What is 2+2?"
    w.generate(wait=True)
    prompt, _ = spy.calls[-1]
    assert prompt == model.apply_chat_template(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": first},
         {"role": "user", "content": "What is 2+2?"}])
    assert len(w.conversation) == 4 and "What is 2+2?" in w._out.value
    w._clear.click()
    assert w.conversation == [] and w.text == ""


def test_shading_and_hover(model):
    w = GenerationWidget(model, prompt=PROMPT, temperature=0.0, max_new_tokens=4)
    w.generate(wait=True)
    assert "background:rgba" not in w._out.value
    w._shade.value = True
    page = w._out.value
    assert page.count('class="tk-tok"') == 4 and "background:rgba(255,140,0," in page
    # hovering " Paris" shows its probability and the alternatives
    assert "title=\"&#x27; Paris&#x27;  p=0." in page and "&#x27; London&#x27;" in page
    assert "text/html" in w._repr_mimebundle_() and "Paris" in w._repr_mimebundle_()["text/html"]


def test_two_widgets_on_one_model_do_not_corrupt_each_other(model):
    a = GenerationWidget(model, prompt=PROMPT, temperature=0.0, max_new_tokens=16)
    b = GenerationWidget(model, prompt="Once upon a time", temperature=0.0, max_new_tokens=16)
    a.generate()
    b.generate()
    a.wait(120)
    b.wait(120)
    assert a.text == model.generate(PROMPT, max_new_tokens=16, temperature=0.0)
    assert b.text == model.generate("Once upon a time", max_new_tokens=16, temperature=0.0)


def test_bad_input_shows_in_the_status(model):
    w = GenerationWidget(model)
    assert w.generate() is None and w.status == "enter a prompt first"
    w.prompt = PROMPT
    w.max_new_tokens = 10**6             # clamps to the slider's range, which the context bounds
    assert w.max_new_tokens <= model.config.max_position_embeddings
    with pytest.raises(Exception, match="no setting 'colour'"):
        GenerationWidget(model, colour="red")


def test_attention_explorer_follows_its_selectors(model):
    fake = InterpModel(model)
    ex = AttentionExplorer(fake, prompt="The cat sat on the mat", layer=3, head=0)
    tokens = [model.tokenizer.decode([i]) for i in model.tokenizer.encode("The cat sat on the mat")]
    ax = ex.figure.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [t.replace(" ", "·") for t in tokens]
    assert ax.images[0].get_array().shape == (len(tokens), len(tokens))
    png = ex._image.value
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and fake.runs == 1
    ex._head.value = -1                   # all heads: one panel per head, no new forward pass
    heads = [a for a in ex.figure.axes if a.images]
    assert len(heads) == model.config.num_attention_heads and fake.runs == 1
    assert ex._image.value != png
    ex._layer.value = 5
    assert fake.runs == 2 and ex.status.startswith("layer 5, all heads")
    from toolkit import errors

    with pytest.raises(errors.IndexOutOfRangeError, match="head must be in 0..8"):
        ex.head = 99
    with pytest.raises(errors.IndexOutOfRangeError, match="layer must be in 0..29"):
        ex.layer = 30
    assert (ex.layer, ex.head, ex._layer.value, ex._head.value) == (5, -1, 5, -1)
    ex.prompt = ""
    assert ex.status == "enter a prompt"


def test_attention_explorer_on_the_real_patterns(model):
    ex = AttentionExplorer(model, prompt="The cat sat on the mat", layer=0, head=2)
    tokens, pats = ex.patterns()
    n = len(model.tokenizer.encode("The cat sat on the mat"))
    assert len(tokens) == n and len(pats) == model.config.num_attention_heads
    for q, row in enumerate(pats[2]):            # causal rows of probabilities
        assert sum(row) == pytest.approx(1.0, abs=1e-5) and all(v == 0 for v in row[q + 1:])
    drawn = ex.figure.axes[0].images[0].get_array().tolist()
    assert [v for r in drawn for v in r] == pytest.approx([v for r in pats[2] for v in r])


@pytest.mark.parametrize("make, needle", [
    (lambda m: GenerationWidget("smollm2-135m-instruct"), "GenerationWidget needs a loaded model"),
    (lambda m: GenerationWidget(None), "GenerationWidget needs a loaded model"),
    (lambda m: GenerationWidget(m, prompt=123), "prompt"),
    (lambda m: GenerationWidget(m, temperature="hot"), "temperature"),
    (lambda m: GenerationWidget(m, seed="abc"), "seed"),
    (lambda m: AttentionExplorer("smollm2-135m-instruct"), "AttentionExplorer needs a loaded model"),
    (lambda m: AttentionExplorer(m, "hi", layer="3"), "layer"),
    (lambda m: AttentionExplorer(m, 42), "prompt"),
], ids=["gen-str-model", "gen-none", "gen-prompt", "gen-temperature", "gen-seed", "attn-str-model", "attn-layer",
        "attn-prompt"])
def test_wrong_types_raise_a_typed_error(model, make, needle):
    from toolkit import errors

    with pytest.raises(errors.ArgumentTypeError, match=needle):
        make(model)


def test_attention_explorer_runs_on_enter_and_on_release_not_on_every_keystroke(model):
    # each update of the prompt or the layer is a forward pass and a redraw: typing a prompt or
    # dragging the slider across 30 layers must not queue one per character / per layer passed
    fake = InterpModel(model)
    ex = AttentionExplorer(fake, prompt="The cat", layer=3)
    assert ex._prompt.continuous_update is False and ex._layer.continuous_update is False
    assert fake.runs == 1


def test_interrupting_generate_wait_stops_the_generation(model):
    # Ctrl-C / the kernel's stop button while a cell waits in generate(wait=True): the cell ends and
    # so does the generation (it must not go on in the background)
    import signal

    main = threading.main_thread().ident
    w = GenerationWidget(model, prompt=PROMPT, temperature=0.0, max_new_tokens=300)
    # a real SIGINT to the main thread, as the kernel sends: it wakes the thread from its wait
    w.observe(lambda ch: ch["new"] == 5 and signal.pthread_kill(main, signal.SIGINT), "n_tokens")
    with pytest.raises(KeyboardInterrupt):
        w.generate(wait=True)
    assert not w.running and w.status.endswith("stopped") and w.n_tokens < 300
    w.unobserve_all("n_tokens")
    w.max_new_tokens = 4
    w.generate(wait=True)
    assert w.text == model.generate(PROMPT, max_new_tokens=4, temperature=0.0)


def test_attention_explorer_keeps_a_bounded_number_of_patterns(model):
    # each kept (prompt, layer) is [head][query][key] as Python floats (~70 MB at 500 tokens):
    # exploring every layer of a few prompts must not keep them all
    fake = InterpModel(model)
    ex = AttentionExplorer(fake, prompt="The cat sat", layer=0, head=0)
    for layer in range(8):
        ex.layer = layer
    assert len(ex._patterns) <= 4 and fake.runs == 8
    ex.head = 2                                            # the latest is still kept: no new pass
    assert fake.runs == 8


def test_attention_of_a_prompt_too_long_for_memory_is_refused(model, monkeypatch):
    # [heads][T][T] as Python floats: 8192 tokens would be ~20 GB and the kernel would die; the
    # available memory is faked small here instead of the prompt made long
    from toolkit import errors
    from toolkit.notebook import session

    monkeypatch.setattr(session, "available_memory", lambda: 1 << 20)
    prompt = " ".join(["word"] * 60)
    with pytest.raises(errors.OutOfMemoryError, match="shorter prompt"):
        session.attention_patterns(model, prompt, 3)
    ex = AttentionExplorer(model, prompt=prompt, layer=3)
    assert ex.status.startswith("error:") and "shorter prompt" in ex.status
    ex.prompt = "The cat sat"
    assert ex.status.startswith("layer 3")


def test_the_saved_static_view_shows_the_finished_generation(model, shell):
    # a notebook saved (or viewed where widgets do not run: GitHub, nbconvert) keeps the text/html
    # of the widget's output: it must be the finished reply, not the empty panel displayed before
    # Generate was pressed
    from IPython.utils.capture import capture_output

    shell.user_ns["w"] = w = GenerationWidget(model, prompt=PROMPT, temperature=0.0, max_new_tokens=6)
    with capture_output() as cap:
        shell.run_cell("display(w)")
        w.generate(wait=True)
    first, *updates = cap.outputs
    assert "Paris" not in first.data["text/html"] and "application/vnd.jupyter.widget-view+json" in first.data
    assert updates and updates[-1].update and updates[-1].transient == first.transient
    assert "Paris" in updates[-1].data["text/html"] and "done" in updates[-1].data["text/html"]
    assert updates[-1].data["application/vnd.jupyter.widget-view+json"] == first.data[
        "application/vnd.jupyter.widget-view+json"]
