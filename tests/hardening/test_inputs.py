"""Bad arguments to public calls: each is a typed ToolkitError (issue 17, "Found")."""
import gc
import math

import pytest

import toolkit
from toolkit import errors
from toolkit.common import validate

NON_FINITE = [float("nan"), float("inf"), float("-inf")]


@pytest.mark.parametrize("bad", NON_FINITE)
def test_non_finite_token_ids(tiny_model, bad):
    with pytest.raises(errors.InvalidArgumentError, match="not a finite number"):
        tiny_model.logits([1, bad])
    with pytest.raises(errors.TokenizerError, match="not a finite number"):
        tiny_model.plugin.detokenize([bad])
    bm = tiny_model.plugin.batch_manager
    with pytest.raises(errors.InvalidArgumentError, match="not a finite number"):
        bm.add_request("a", [bad])
    assert bm.pending == 0  # nothing half-queued
    with pytest.raises(errors.InvalidArgumentError):
        tiny_model.generate([1, bad], max_new_tokens=1)


def test_token_ids_out_of_range_and_wrong_types(tiny_model):
    v = tiny_model.config.vocab_size
    with pytest.raises(errors.IndexOutOfRangeError):
        tiny_model.logits([v])
    with pytest.raises(errors.IndexOutOfRangeError):
        tiny_model.logits([2**40])  # would overflow int32 on the way to C
    with pytest.raises(errors.IndexOutOfRangeError):
        tiny_model.plugin.batch_manager.add_request("a", [-1])
    with pytest.raises(errors.ArgumentTypeError):
        tiny_model.logits([1.5])
    with pytest.raises(errors.ArgumentTypeError):
        tiny_model.logits([True])
    with pytest.raises(errors.ArgumentTypeError):
        tiny_model.logits(["1"])
    with pytest.raises(errors.TokenizerError):
        tiny_model.plugin.detokenize([v])
    # whole floats (the plugin guide's convention) still work everywhere
    assert tiny_model.plugin.detokenize([30.0, 31.0]) == tiny_model.plugin.detokenize([30, 31])
    assert tiny_model.logits([1.0, 2.0]).shape == (2, v)


def test_add_request_none_and_unhashable_ids(tiny_model):
    bm = tiny_model.plugin.batch_manager
    with pytest.raises(errors.ArgumentTypeError, match="list of ints"):
        bm.add_request("a", None)
    with pytest.raises(errors.ArgumentTypeError, match="hashable"):
        bm.add_request(["x"], [1, 2])
    with pytest.raises(errors.ArgumentTypeError, match="None"):
        bm.add_request(None, [1, 2])
    assert bm.pending == 0
    bm.add_request(("a", 1), [1, 2], max_new_tokens=2)  # a tuple id is fine
    assert len(bm.run()[("a", 1)].to_list()) <= 2


@pytest.mark.parametrize("text", ["a\ud800b", b"caf\xe9".decode("utf-8", "surrogateescape"), "\udfff"])
def test_lone_surrogates_are_tokenizer_errors(tiny_model, text):
    # Decision: reject, naming the position (a surrogate has no UTF-8 bytes, so no token either).
    with pytest.raises(errors.TokenizerError, match="lone surrogate"):
        tiny_model.generate(text, max_new_tokens=1)
    with pytest.raises(errors.TokenizerError, match="lone surrogate"):
        tiny_model.tokenizer.encode(text)
    with pytest.raises(errors.TokenizerError):
        tiny_model.plugin.infer_batch([text])


@pytest.mark.parametrize("kw", [
    {"top_k": 2**64}, {"top_k": -1}, {"max_new_tokens": 2**40}, {"temperature": float("inf")},
    {"temperature": float("nan")}, {"top_p": float("nan")}, {"min_p": 2.0}, {"repetition_penalty": 0},
    {"top_k": 1.5}, {"temperature": "0.5"}, {"temperature": 10**400},
])
def test_bad_sampling_arguments(tiny_model, kw):
    with pytest.raises(errors.ToolkitError) as e:
        tiny_model.generate("ab", **kw)
    assert isinstance(e.value, (errors.InvalidArgumentError, errors.ArgumentTypeError))
    with pytest.raises(errors.ToolkitError):
        tiny_model.plugin.batch_manager.add_request("x", [1], **kw)


@pytest.mark.parametrize("field", ["rope_theta", "vocab_size", "hidden_size", "num_hidden_layers",
                                   "tie_word_embeddings", "rms_norm_eps"])
def test_load_rejects_architecture_keywords_by_name(tiny_gguf, field):
    with pytest.raises(errors.InvalidArgumentError, match=field):
        toolkit.load(tiny_gguf, **{field: 1})


def test_load_keeps_runtime_settings(tiny_gguf):
    with toolkit.load(tiny_gguf, threads=1, kv_cache_dtype="F16", temperature=0.5) as m:
        assert m.config.kv_cache_dtype == "F16"
        assert len(m.generate_ids("ab", max_new_tokens=3, stop_at_eos=False, seed=1)) == 3


def test_use_after_close_is_closed_error(tiny_gguf):
    m = toolkit.load(tiny_gguf, threads=1)
    m.close()
    for call in (lambda: m.logits([1]), lambda: m.generate("a"), lambda: m.tokenizer,
                 lambda: m.model, lambda: list(m.stream("a")), lambda: m.plugin.infer_batch(["a"])):
        with pytest.raises(errors.ClosedError, match="closed"):
            call()
    m.close()  # twice is fine


def test_close_stops_a_generation_already_running(tiny_gguf):
    """A generation running when its model is closed (a widget's thread, a half-read stream) stops
    at its next token with ClosedError; it used to run to its end on the closed model."""
    import threading

    m = toolkit.load(tiny_gguf, threads=1)
    it = m.stream("a", max_new_tokens=200, stop_at_eos=False)
    next(it)
    m.close()
    with pytest.raises(errors.ClosedError, match="closed"):
        for _ in it:
            pass

    m = toolkit.load(tiny_gguf, threads=1)
    got, failed, started, closed = [], [], threading.Event(), threading.Event()

    def run():
        try:
            for piece in m.stream("a", max_new_tokens=250, stop_at_eos=False):
                got.append(piece)
                started.set()
                closed.wait(60)  # the close lands between two tokens, as a user's click would
        except errors.ClosedError as exc:
            failed.append(exc)

    t = threading.Thread(target=run)
    t.start()
    assert started.wait(60)
    m.close()
    closed.set()
    t.join(60)
    assert not t.is_alive() and failed and len(got) < 250


def test_weight_kept_after_close_stays_readable(tiny_gguf, tiny_hf):
    for path in (tiny_gguf, tiny_hf):
        m = toolkit.load(path, threads=1)
        w = m.model.layers[0].self_attn.q_proj.weight
        e = m.model.embed_tokens.weight
        before = w.to_list()
        m.close()
        del m
        gc.collect()
        assert w.to_list() == before
        assert all(math.isfinite(x) for x in e.to_list())


def test_validate_helpers_directly():
    assert validate.token_ids((1, 2.0)) == [1, 2]
    with pytest.raises(errors.InvalidArgumentError):
        validate.token_ids([], allow_empty=False)
    assert validate.number("x", 3, 0, 5, integer=True) == 3
    with pytest.raises(errors.InvalidArgumentError):
        validate.number("x", 0.0, 0.0, 1.0, lo_open=True)
    with pytest.raises(errors.TokenizerError, match="needs a str"):
        validate.text(b"bytes")
    assert validate.request_id(0) == 0
    from toolkit.core.engine.backend import Tensor

    assert validate.token_ids(Tensor.from_list([[1, 2], [3, 4]], dtype="I32")) == [1, 2, 3, 4]
    with pytest.raises(errors.ArgumentTypeError):
        validate.token_ids(Tensor.from_list([1.5]))


@pytest.mark.parametrize("threads,error", [(2**70, errors.InvalidArgumentError), (-1, errors.InvalidArgumentError),
                                           ("2", errors.ArgumentTypeError), (1.0, errors.ArgumentTypeError)])
def test_bad_thread_counts(tiny_gguf, threads, error):
    with pytest.raises(error):
        toolkit.load(tiny_gguf, threads=threads)
