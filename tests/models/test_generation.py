"""Generation on the real default model: sampling, seeds, stops, streaming, batching, bad input."""
import pytest

from toolkit import errors
from toolkit.core.engine import backend

PROMPT = "The capital of France is"


def test_generate_returns_new_text_only(model):
    text = model.generate(PROMPT, max_new_tokens=8)
    assert text and not text.startswith(PROMPT)
    ids = model.generate_ids(PROMPT, max_new_tokens=8)
    assert len(ids) == 8 and model.tokenizer.decode(ids) == text


def test_stream_pieces_join_to_generate(model):
    pieces = list(model.stream(PROMPT, max_new_tokens=12))
    assert len(pieces) > 1
    assert "".join(pieces) == model.generate(PROMPT, max_new_tokens=12)


def test_same_seed_same_text_on_any_thread_count(model):
    kw = dict(max_new_tokens=24, temperature=0.9, top_k=40, top_p=0.95, min_p=0.02, repetition_penalty=1.1)
    old = backend.get_threads()
    try:
        backend.set_threads(1)
        a = model.generate_ids(PROMPT, seed=1234, **kw)
        backend.set_threads(2)
        b = model.generate_ids(PROMPT, seed=1234, **kw)
    finally:
        backend.set_threads(old)
    c = model.generate_ids(PROMPT, seed=99, **kw)
    assert a == b
    assert a != c  # 24 sampled tokens from a different seed: identical would be a broken RNG


def test_top_k_1_is_greedy(model):
    greedy = model.generate_ids(PROMPT, max_new_tokens=10)
    assert model.generate_ids(PROMPT, max_new_tokens=10, temperature=1.5, top_k=1, seed=5) == greedy


def test_repetition_penalty_changes_greedy_output(model):
    prompt = "one two one two one two one two"
    plain = model.generate_ids(prompt, max_new_tokens=12)
    penalised = model.generate_ids(prompt, max_new_tokens=12, repetition_penalty=1.8)
    assert plain != penalised


def test_stop_strings_cut_text_and_stream(model):
    full = model.generate(PROMPT, max_new_tokens=24, stop_at_eos=False)
    stop = full[len(full) // 2: len(full) // 2 + 3]
    assert stop.strip()
    cut = model.generate(PROMPT, max_new_tokens=24, stop=[stop], stop_at_eos=False)
    assert cut == full[:full.index(stop)]
    assert "".join(model.stream(PROMPT, max_new_tokens=24, stop=[stop], stop_at_eos=False)) == cut
    ids = model.generate_ids(PROMPT, max_new_tokens=24, stop=[stop], stop_at_eos=False)
    assert stop in model.tokenizer.decode(ids) and len(ids) < 24


def test_chat_generation_stops_at_eos(model):
    prompt = model.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    ids = model.generate_ids(prompt, max_new_tokens=64)
    assert 0 < len(ids) < 64 and 2 not in ids
    more = model.generate_ids(prompt, max_new_tokens=len(ids) + 1, stop_at_eos=False)
    assert more[:len(ids)] == ids and more[len(ids)] == 2


def test_context_length_is_enforced(model):
    ctx = model.config.max_position_embeddings
    with pytest.raises(errors.ContextLengthError):
        model.generate(PROMPT, max_new_tokens=ctx)


@pytest.mark.parametrize("bad, exc", [
    ("", errors.InvalidArgumentError),
    ([], errors.InvalidArgumentError),
    ([1, 2, 10 ** 6], errors.IndexOutOfRangeError),
    ([1, -3], errors.IndexOutOfRangeError),
    (3.5, errors.ArgumentTypeError),
    ([1, "a"], errors.ArgumentTypeError),
])
def test_bad_prompts_raise(model, bad, exc):
    with pytest.raises(exc):
        model.generate(bad, max_new_tokens=2)


@pytest.mark.parametrize("kw", [
    dict(temperature=-1.0), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=-1), dict(min_p=2.0),
    dict(repetition_penalty=0.0), dict(max_new_tokens=-1), dict(seed="x"), dict(stop=[""]), dict(bogus=1),
])
def test_bad_sampling_settings_raise(model, kw):
    kw.setdefault("max_new_tokens", 2)
    with pytest.raises(errors.ToolkitError):
        model.generate(PROMPT, **kw)


def test_logits_rows_match_incremental_decode(model):
    ids = model.tokenizer.encode("Paris is the capital and most populous city of France.")
    full = model.logits(ids).tolist()
    lm = model.model
    cache = lm.new_cache(len(ids))
    lm.forward_batch([(ids[:5], cache)], logits="last")
    for i in range(5, len(ids)):
        row = lm.forward_batch([([ids[i]], cache)], logits="last").to_list()
        assert max(abs(a - b) for a, b in zip(row, full[i])) < 1e-3


def test_forward_batch_matches_single_sequences(model):
    lm = model.model
    prompts = [model.tokenizer.encode(t) for t in ("Hello there, my friend", "1 2 3", "Once upon a time in")]
    batched = lm.forward_batch([(p, lm.new_cache(len(p))) for p in prompts], logits="last").tolist()
    for p, row in zip(prompts, batched):
        single = lm.forward(p, logits="last").to_list()
        assert max(abs(a - b) for a, b in zip(single, row)) < 1e-3


def test_infer_batch_matches_one_by_one(model):
    prompts = ["The capital of France is", "Water boils at", "My favourite colour is"]
    batch = model.plugin.infer_batch(prompts, max_new_tokens=10)
    single = [model.generate(p, max_new_tokens=10) for p in prompts]
    assert batch == single


def test_batch_manager_continuous_batching(model):
    from toolkit.common.managers.batch_manager import BatchManager

    bm = BatchManager(model.model, max_batch_size=2)
    tok = model.tokenizer
    bm.add_request("a", tok.encode("Water boils at"), max_new_tokens=3)
    bm.add_request("b", tok.encode("The capital of France is"), max_new_tokens=9)
    bm.add_request("c", tok.encode("Once upon a time"), max_new_tokens=5)
    results = bm.run()
    assert set(results) == {"a", "b", "c"}
    for rid, prompt, n in (("a", "Water boils at", 3), ("b", "The capital of France is", 9), ("c", "Once upon a time", 5)):
        assert results[rid].to_list() == model.generate_ids(prompt, max_new_tokens=n)
    assert bm.step() is None
    with pytest.raises(errors.ToolkitError):
        bm.add_request("x", [])


def test_plugin_tokenize_detokenize(model):
    p = model.plugin
    ids = p.tokenize("Hello, world!")
    assert ids == [19556.0, 28.0, 905.0, 17.0]
    assert p.detokenize(ids) == "Hello, world!"
    with pytest.raises(errors.TokenizerError):
        p.detokenize([1.5])
    with pytest.raises(errors.ToolkitError):
        p.tokenize(42)


def test_guide_generate_returns_tensor(model):
    from toolkit.core.engine.backend import Tensor

    ids = model.tokenizer.encode(PROMPT)
    t = Tensor([1, len(ids)])
    t.load([float(i) for i in ids])
    out = model.model.generate(t, max_new_tokens=6)
    assert out.shape == (1, 6) and out.dtype == "I32"
    assert out.to_list() == model.generate_ids(PROMPT, max_new_tokens=6)


def test_model_logits_are_bit_identical_across_thread_counts(model):
    ids = model.tokenizer.encode("Threads must not change a single bit of the logits, 1 2 3.")
    old = backend.get_threads()
    try:
        backend.set_threads(1)
        one = model.logits(ids).to_list()
        backend.set_threads(2)
        two = model.logits(ids).to_list()
        backend.set_threads(3)  # more threads than cores, uneven splits
        three = model.logits(ids).to_list()
    finally:
        backend.set_threads(old)
    assert one == two == three


def test_scalar_reference_kernels_agree_with_simd(model):
    ids = model.tokenizer.encode("The scalar twins are the reference.")
    simd = model.logits(ids).to_list()
    backend.set_simd(False)
    try:
        scalar = model.logits(ids).to_list()
    finally:
        backend.set_simd(True)
    assert max(abs(a - b) for a, b in zip(simd, scalar)) < 2e-3


def test_f16_kv_cache_stays_close(smollm2_gguf_path, model, golden_logits):
    import toolkit

    prompt = golden_logits["prompts"][1]  # the long one: attention over 185 cached positions
    with toolkit.load(smollm2_gguf_path, kv_cache_dtype="F16") as m16:
        cache = m16.model.new_cache(8)
        assert cache.k[0].dtype == "F16"
        ids = prompt["input_ids"]
        lm = m16.model
        cache = lm.new_cache(len(ids))
        lm.forward_batch([(ids[:-1], cache)], logits="last")
        last = lm.forward_batch([(ids[-1:], cache)], logits="last").to_list()  # reads the F16 cache
    gold = prompt["last_position_logits"]
    assert max(range(len(last)), key=last.__getitem__) == prompt["last_position_argmax"]
    assert max(abs(a - b) for a, b in zip(last, gold)) < 0.05
    with pytest.raises(errors.ToolkitError):
        toolkit.load(smollm2_gguf_path, kv_cache_dtype="Q4_1")


def test_hook_edits_flow_into_the_computation(model):
    lm = model.model
    ids = model.tokenizer.encode(PROMPT)
    base = lm.forward(ids, logits="last").to_list()

    def identity(t, name):
        return None

    def zero_mlp(t, name):
        from toolkit.core.engine.backend import Tensor

        return Tensor(t.shape)  # zeros: ablate layer 3's MLP output

    handle = lm.add_hook("blocks.3.hook_mlp_out", identity)
    try:
        same = lm.forward(ids, logits="last").to_list()
        handle.remove()
        lm.add_hook("blocks.3.hook_mlp_out", zero_mlp)
        ablated = lm.forward(ids, logits="last").to_list()
    finally:
        lm.remove_hooks()
    assert same == base
    assert max(abs(a - b) for a, b in zip(ablated, base)) > 0.1
    assert lm.forward(ids, logits="last").to_list() == base  # nothing left behind


def test_forward_batch_rejects_bad_batches(model):
    lm = model.model
    cache = lm.new_cache(4)
    with pytest.raises(errors.InvalidArgumentError):
        lm.forward_batch([([1], cache), ([2], cache)])
    with pytest.raises(errors.InvalidArgumentError):
        lm.forward_batch([])
    with pytest.raises(errors.ContextLengthError):
        lm.forward_batch([([1, 2, 3, 4, 5], cache)])
    with pytest.raises(errors.ArgumentTypeError):
        lm.forward_batch([([1], "not a cache")])
    assert cache.length == 0


def test_apply_chat_template_tokenize_returns_the_ids_generation_uses(model):
    """tokenize=True (Hugging Face's flag) gives ids, not the text it used to return unchanged."""
    msgs = [{"role": "user", "content": "What is 2+2?"}]
    text = model.apply_chat_template(msgs)
    ids = model.apply_chat_template(msgs, tokenize=True)
    assert isinstance(text, str) and ids == model.tokenizer.encode(text)
    assert model.generate_ids(ids, max_new_tokens=4) == model.generate_ids(text, max_new_tokens=4)
    with pytest.raises(errors.ArgumentTypeError):
        model.apply_chat_template(msgs, tokenize="yes")


@pytest.mark.parametrize("bad", [None, 5, ["a.gguf"]])
def test_load_rejects_a_model_that_is_not_a_name_or_path(bad):
    import toolkit

    with pytest.raises(errors.ArgumentTypeError):
        toolkit.load(bad)


def test_kv_cache_truncate_rewinds_and_checks_its_argument(model):
    lm = model.model
    ids = model.tokenizer.encode("The Eiffel Tower is in the city of")
    full = lm.forward(ids)
    cache = lm.new_cache(len(ids))
    lm.forward(ids, cache)
    cache.truncate(3)
    again = lm.forward(ids[3:], cache)
    assert bytes(again.memoryview()) == bytes(full[3:].contiguous().memoryview())
    for bad, exc in [(2.5, errors.ArgumentTypeError), ("a", errors.ArgumentTypeError), (None, errors.ArgumentTypeError),
                     (True, errors.ArgumentTypeError), (-1, errors.InvalidArgumentError),
                     (len(ids) + 1, errors.InvalidArgumentError)]:
        with pytest.raises(exc):
            cache.truncate(bad)
        assert cache.length == len(ids)
    with pytest.raises(errors.InvalidArgumentError):
        lm.new_cache(0)  # not "the default capacity"


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_token_event_logprob_is_the_log_of_prob_with_a_repetition_penalty(model, temperature):
    """prob and logprob describe the model's own distribution; the repetition penalty (which edits
    the logits row in place for sampling) used to leak into logprob (exp(logprob) up to 2000)."""
    import math

    events = list(model.stream("The cat sat on the mat. The cat sat on the", max_new_tokens=6, details=True,
                               repetition_penalty=1.5, temperature=temperature, seed=1))
    for ev in events:
        assert ev.logprob <= 0
        assert math.exp(ev.logprob) == pytest.approx(ev.prob, rel=1e-4)
    plain = list(model.stream("The cat sat on the mat. The cat sat on the", max_new_tokens=1, details=True))
    assert events[0].top == plain[0].top  # the alternatives come from the raw logits too


@pytest.mark.parametrize("call, kwargs", [
    ("generate", dict(details=True)), ("generate_ids", dict(details=True)),
    ("generate_ids", dict(details=True, stop=["x"])), ("generate_ids", dict(probs=True, stop=["x"])),
    ("generate", dict(hooks=[])), ("stream", dict(hooks=[])), ("generate_ids", dict(hooks=[])),
])
def test_keywords_of_another_call_are_typed_errors(model, call, kwargs):
    """Not a bare TypeError from deep inside ('got multiple values for keyword argument')."""
    with pytest.raises(errors.ArgumentTypeError):
        getattr(model, call)("Hi", max_new_tokens=2, **kwargs)


@pytest.mark.parametrize("call", ["logits", "generate", "run_with_cache", "run_with_hooks"])
@pytest.mark.parametrize("bad", [-1, 49152])
def test_out_of_vocab_ids_name_the_vocabulary(model, call, bad):
    """Not 'outside 0..2147483647' (the int32 bound) for -1: the range the model accepts."""
    with pytest.raises(errors.IndexOutOfRangeError, match="49151"):
        getattr(model, call)([5, bad])


def test_load_time_max_new_tokens_is_the_default_of_every_call(smollm2_gguf_path):
    """toolkit.load(max_new_tokens=3) is a default like temperature: generate/generate_ids/stream
    used to override it with their own 64."""
    import toolkit

    with toolkit.load(smollm2_gguf_path, max_new_tokens=3) as m:
        p = "Once upon a time"
        assert len(m.generate_ids(p)) == 3 and len(list(m.stream(p))) <= 3
        assert m.generate(p) == m.plugin.generate_text(p) == m.tokenizer.decode(m.generate_ids(p))
        assert len(m.generate_ids(p, max_new_tokens=5)) == 5
    with toolkit.load(smollm2_gguf_path) as m:
        assert len(m.generate_ids("Once upon a time", stop_at_eos=False)) == 64  # the documented default
