"""`%load_ext toolkit` magics on a headless IPython shell."""
import pytest
from IPython.utils.capture import capture_output

from nb_fakes import InterpModel, magics_of

PROMPT = "The capital of France is"


def run(ip, cell):
    with capture_output() as cap:
        result = ip.run_cell(cell)
    return result, cap


def test_tk_load_binds_the_model_and_shows_its_summary(shell, smollm2_gguf_path):
    result, cap = run(shell, f"%tk_load {smollm2_gguf_path} --threads 2 -o m")
    assert result.success, cap.stderr
    m = shell.user_ns["m"]
    assert magics_of(shell).model is m
    (out,) = cap.outputs
    text, page = out.data["text/plain"], out.data["text/html"]
    for field in ("architecture", "parameters", "weights: embed", "weights: mlp", "bytes mapped",
                  "KV cache per token", "load time"):
        assert field in text and field in page
    assert "30 layers" in text and "Q4_1" in text and "<table" in page
    # KV cache per token: 2 (k, v) x 30 layers x 3 KV heads x 64 x 4 bytes (F32) = 45 KiB
    assert "45.0 KiB (F32)" in text


def test_tk_generate_streams_the_expected_text(shell, model):
    magics_of(shell).model = model
    result, cap = run(shell, f"%%tk_generate --max-new-tokens 8\n{PROMPT}")
    assert result.success, cap.stderr
    text, summary = cap.stdout.rstrip("\n").rsplit("\n", 1)
    assert text == model.generate(PROMPT, max_new_tokens=8, temperature=0)
    assert text.startswith(" Paris.")
    assert summary.startswith("[prefill] 5 tokens in ") and summary.endswith("8 new tokens")
    result, cap = run(shell, f"%%tk_generate --max-new-tokens 12 --temperature 0.9 --top-p 0.9 --top-k 50 --seed 7\n"
                             f"{PROMPT}")
    assert result.success, cap.stderr
    sampled = cap.stdout.rstrip("\n").rsplit("\n", 1)[0]
    assert sampled == model.generate(PROMPT, max_new_tokens=12, temperature=0.9, top_p=0.9, top_k=50, seed=7)


def test_tk_generate_chat(shell, model):
    magics_of(shell).model = model
    result, cap = run(shell, "%%tk_generate --chat --max-new-tokens 20\nWhat is the capital of France?")
    assert result.success, cap.stderr
    prompt = model.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    assert cap.stdout.rstrip("\n").rsplit("\n", 1)[0] == model.generate(prompt, max_new_tokens=20)


def test_a_bad_argument_prints_one_line_and_the_next_cell_works(shell, model):
    magics_of(shell).model = model
    for cell, needle in (("%%tk_generate --temperature abc\nhi", "invalid float value"),
                         ("%%tk_generate --temperature -1\nhi", "temperature must be in"),
                         ("%%tk_generate --no-such-flag\nhi", "unrecognized arguments"),
                         ("%%tk_generate\n", "cell body is empty"),
                         ("%%tk_generate\n   \n", "the cell is empty"),
                         ("%tk_load /no/such/model.gguf", "tk_load"),
                         ("%tk_attention hello --layer 99", "layer must be in 0..29"),
                         ("%tk_bench --lengths a,b", "--lengths"),
                         # one new token is the prefill's: no decode step to time
                         ("%tk_bench --lengths 4 --new-tokens 1", "--new-tokens must be at least 2"),
                         # more than the batch manager runs at once would measure its queue, and
                         # 100000 sequences would run for half an hour
                         ("%tk_bench --lengths 4 --batch 1,100000", "--batch sizes must be at most 16"),
                         ("%tk_load -o 1bad", "not a valid variable name"),
                         ("%tk_load -o class", "not a valid variable name"),
                         ("%tk_cache hi --names blocks.0.hook_resid_post -o 'a b'", "not a valid variable name")):
        result, cap = run(shell, cell)
        assert not result.success, cell
        lines = cap.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("UsageError: ") and needle in lines[0], (cell, cap.stderr)
        assert "Traceback" not in cap.stdout + cap.stderr
        result, cap = run(shell, "x = 1 + 1\nx")
        assert result.success and result.result == 2
    result, cap = run(shell, f"%%tk_generate --max-new-tokens 3\n{PROMPT}")
    assert result.success and cap.stdout.startswith(" Paris")


def test_reload_ext_keeps_the_magics_working(shell, model):
    magics_of(shell).model = model
    result, _ = run(shell, "%reload_ext toolkit")
    assert result.success
    assert magics_of(shell).model is model
    result, cap = run(shell, f"%%tk_generate --max-new-tokens 2\n{PROMPT}")
    assert result.success and cap.stdout.startswith(" Paris")


def test_model_displays_as_an_html_table(shell, model):
    shell.user_ns["m"] = model
    data, _ = shell.display_formatter.format(model)
    assert "<table" in data["text/html"] and "KV cache per token" in data["text/html"]
    assert data["text/plain"].startswith("<toolkit.Model")


def test_tk_attention_draws_the_layer(shell, model):
    fake = InterpModel(model)
    magics_of(shell).model = fake
    result, cap = run(shell, "%tk_attention The cat sat --layer 2 --head 1")
    assert result.success, cap.stderr
    (fig,) = [o for o in cap.outputs]
    assert "Figure" in fig.data["text/plain"]
    result, cap = run(shell, "%tk_attention The cat sat --layer 2")
    assert result.success, cap.stderr and fake.runs == 2
    result, cap = run(shell, "%tk_attention The cat sat --layer 2 --head 9")
    assert not result.success and "head must be in 0..8" in cap.stderr


def test_tk_attention_on_the_model(shell, model, tmp_path):
    magics_of(shell).model = model
    result, cap = run(shell, f"%tk_attention The cat sat --layer 0 --save {tmp_path / 'attn'}")
    assert result.success, cap.stderr
    assert (tmp_path / "attn.png").stat().st_size > 0 and (tmp_path / "attn.svg").stat().st_size > 0


def test_tk_cache_binds_the_cache(shell, model):
    magics_of(shell).model = model
    if not hasattr(model, "run_with_cache"):  # until the interp layer lands: one clear line
        result, cap = run(shell, "%tk_cache hello --names blocks.0.hook_resid_post")
        assert not result.success and "needs model.run_with_cache()" in cap.stderr
        model = InterpModel(model)
        names = "blocks.0.attn.hook_pattern"
    else:
        names = "blocks.0.hook_resid_post"
    magics_of(shell).model = model
    result, cap = run(shell, f"%tk_cache The cat sat --names {names} -o acts")
    assert result.success, cap.stderr
    assert names in list(shell.user_ns["acts"].keys())
    assert "bound to `acts`" in cap.stdout and "<table" in cap.outputs[0].data["text/html"]
    data, _ = shell.display_formatter.format(shell.user_ns["acts"])   # `acts` alone in a cell
    assert "<table" in data["text/html"] and names in data["text/html"]


def test_tk_bench_measures_and_plots(shell, model):
    magics_of(shell).model = model
    result, cap = run(shell, "%tk_bench --lengths 4,16 --new-tokens 3 --batch 1,2")
    assert result.success, cap.stderr
    table, fig, batch = cap.outputs
    assert "prefill tok/s" in table.data["text/html"] and "tk_bench on " in table.data["text/plain"]
    rows = table.data["text/plain"].splitlines()[2:]
    assert [r.split()[0] for r in rows] == ["4", "16"] and all(r.split()[2] == "2" for r in rows)
    assert "Figure" in fig.data["text/plain"] and "Figure" in batch.data["text/plain"]


def test_tk_profile_shows_the_table_and_the_layer_chart(shell, model):
    from nb_fakes import ProfiledModel

    fake = model if hasattr(model, "profile") else ProfiledModel(model)
    magics_of(shell).model = fake
    result, cap = run(shell, f"%tk_profile {PROMPT} --max-new-tokens 2")
    assert result.success, cap.stderr
    table, chart = cap.outputs
    assert "by op" in table.data["text/html"] and "blocks.0" in table.data["text/html"]
    assert "Figure" in chart.data["text/plain"]
    if fake is not model:
        assert fake.profiled == 1
        magics_of(shell).model = model
        result, cap = run(shell, f"%tk_profile {PROMPT}")
        assert not result.success and "needs model.profile()" in cap.stderr


def interrupt_on_pass(model, n):
    """Ctrl-C as the kernel delivers it (SIGINT in the main thread), landing inside the n-th forward
    pass, in the middle of the model's layers."""
    import _thread

    seen = [0]

    def hook(t, hook):
        seen[0] += 1
        if seen[0] == n:
            _thread.interrupt_main()
    model.add_hook("blocks.10.hook_resid_post", hook)


@pytest.mark.parametrize("cell, n", [
    (f"%%tk_generate --max-new-tokens 40\n{PROMPT}", 4),
    (f"%tk_cache {PROMPT} --names blocks.*.hook_resid_post", 1),
    (f"%tk_attention {PROMPT} --layer 3", 1),
    (f"%tk_profile {PROMPT} --max-new-tokens 16", 4),
    ("%tk_bench --lengths 8 --new-tokens 8", 4),
], ids=["generate", "cache", "attention", "profile", "bench"])
def test_an_interrupt_ends_the_magic_with_one_line_and_the_session_goes_on(shell, model, cell, n):
    magics_of(shell).model = model
    expected = model.generate(PROMPT, max_new_tokens=8)
    interrupt_on_pass(model, n)
    try:
        result, cap = run(shell, cell)
    finally:
        model.remove_hooks()
    assert not result.success, "an interrupted cell fails, so Run All stops there"
    lines = cap.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("UsageError: ") and "interrupted" in lines[0], cap.stderr
    assert "Traceback" not in cap.stdout + cap.stderr
    assert model.generate(PROMPT, max_new_tokens=8) == expected
    result, cap = run(shell, f"%%tk_generate --max-new-tokens 8\n{PROMPT}")
    assert result.success and cap.stdout.startswith(expected)


def test_an_interrupted_generation_keeps_the_text_so_far(shell, model):
    magics_of(shell).model = model
    expected = model.generate(PROMPT, max_new_tokens=40)
    interrupt_on_pass(model, 4)
    try:
        result, cap = run(shell, f"%%tk_generate --max-new-tokens 40\n{PROMPT}")
    finally:
        model.remove_hooks()
    text, summary = cap.stdout.rstrip("\n").rsplit("\n", 1)
    assert text and expected.startswith(text) and len(text) < len(expected)
    assert summary.startswith("[prefill] 5 tokens")
    assert "interrupted after" in cap.stderr


def test_quoted_arguments_are_unquoted(shell, model, tmp_path):
    magics_of(shell).model = model
    result, cap = run(shell, "%tk_cache 'The cat sat' --names 'blocks.*.hook_resid_post' -o acts")
    assert result.success, cap.stderr
    acts = shell.user_ns["acts"]
    assert len(acts.keys()) == model.config.num_hidden_layers
    assert acts["blocks.0.hook_resid_post"].shape[0] == len(model.tokenizer.encode("The cat sat"))
    result, cap = run(shell, f'%tk_attention "The cat sat" --layer 0 --head 1 --save "{tmp_path / "a"}"')
    assert result.success, cap.stderr
    (fig,) = cap.outputs
    assert (tmp_path / "a.png").is_file()
    # apostrophes inside a prompt stay as they are
    result, cap = run(shell, "%tk_cache the cat's toy --names blocks.0.hook_resid_post -o acts")
    assert result.success, cap.stderr
    assert shell.user_ns["acts"]["blocks.0.hook_resid_post"].shape[0] == len(model.tokenizer.encode("the cat's toy"))


def test_a_closed_model_is_not_silently_replaced(shell, smollm2_gguf_path):
    result, cap = run(shell, f"%tk_load {smollm2_gguf_path} -o m")
    assert result.success, cap.stderr
    shell.user_ns["m"].close()
    result, cap = run(shell, f"%%tk_generate --max-new-tokens 3\n{PROMPT}")
    assert not result.success and "Traceback" not in cap.stdout + cap.stderr
    lines = cap.stderr.strip().splitlines()
    assert len(lines) == 1 and "closed" in lines[0] and "%tk_load" in lines[0], cap.stderr
    assert "loading" not in cap.stdout
    result, cap = run(shell, f"%tk_load {smollm2_gguf_path} -o m")
    assert result.success, cap.stderr
    result, cap = run(shell, f"%%tk_generate --max-new-tokens 3\n{PROMPT}")
    assert result.success and cap.stdout.startswith(" Paris")


def test_tk_cache_refuses_a_cache_that_would_not_fit_in_memory(shell, model, monkeypatch):
    # every hook of a long prompt grows with T^2 (attention scores and patterns): a few thousand
    # tokens would take more memory than the machine has and the kernel would die. Here the
    # available memory is faked small instead of the prompt made long.
    from toolkit.notebook import magics

    magics_of(shell).model = model
    monkeypatch.setattr(magics, "available_memory", lambda: 8 << 20)
    prompt = " ".join(["word"] * 60)
    result, cap = run(shell, f"%tk_cache {prompt} -o acts")
    assert not result.success and "acts" not in shell.user_ns
    lines = cap.stderr.strip().splitlines()
    assert len(lines) == 1 and "memory" in lines[0] and "--names" in lines[0], cap.stderr
    result, cap = run(shell, f"%tk_cache {prompt} --names blocks.0.hook_resid_post -o acts")
    assert result.success, cap.stderr


def test_the_cache_size_estimate_matches_the_real_cache(model):
    from toolkit.notebook import magics

    ids = model.tokenizer.encode(" ".join(["word"] * 40))
    for names in (None, "blocks.*.attn.hook_pattern", "blocks.3.hook_resid_post"):
        est = magics.cache_bytes(model, ids, names)
        _, cache = model.run_with_cache(ids, **({} if names is None else {"names_filter": names}))
        assert abs(est - cache.nbytes) <= 0.01 * cache.nbytes, (names, est, cache.nbytes)


def test_tk_attention_titles_negative_indices_as_the_layer_and_head_drawn(shell, model):
    magics_of(shell).model = InterpModel(model)
    captured = []
    shell.display_formatter.formatters["image/png"].for_type_by_name(
        "matplotlib.figure", "Figure", lambda fig: captured.append(fig._suptitle.get_text() if fig._suptitle else
                                                                     fig.axes[0].get_title()) or None)
    result, cap = run(shell, "%tk_attention The cat sat --layer -1 --head -1")
    assert result.success, cap.stderr
    result, cap = run(shell, "%tk_attention The cat sat --layer -2")
    assert result.success, cap.stderr
    assert captured == ["attention pattern layer 29 head 8", "layer 28: all heads"], captured
