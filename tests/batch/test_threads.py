"""Threads: requests added, cancelled, inspected and streamed from other threads while one steps;
infer_batch from several threads on one plugin."""
import threading
import time

import pytest
from batch_helpers import TEXTS, sampling_for

from toolkit import errors
from toolkit.common.managers.batch_manager import BatchManager


def _start(fn, *args):
    errs = []

    def body():
        try:
            fn(*args)
        except BaseException as e:  # re-raised in the test thread by _join
            errs.append(e)
    t = threading.Thread(target=body, daemon=True)
    t.start()
    return t, errs


def _join(t, errs, timeout=120):
    t.join(timeout)
    assert not t.is_alive(), "thread hung"
    if errs:
        raise errs[0]


def test_adding_while_another_thread_steps(model, prompts, references):
    bm = BatchManager(model.model, max_batch_size=6, prefill_chunk=8)
    n = 12
    adding = threading.Event()
    adding.set()

    def adder():
        for i in range(n):
            bm.add_request(i, prompts[i], **sampling_for(i))
            time.sleep(0.01 * (i % 3))
        adding.clear()

    t, errs = _start(adder)
    seen = []
    while adding.is_set() or bm.pending:
        got = bm.run()
        seen.extend(got.items())
        if not got:
            time.sleep(0.002)
    _join(t, errs)
    seen.extend(bm.run().items())
    assert sorted(rid for rid, _ in seen) == list(range(n))  # each exactly once
    for rid, res in seen:
        assert res.token_ids == references[rid][0], rid


def test_cancel_status_and_stream_from_other_threads(model, prompts, references):
    bm = BatchManager(model.model, max_batch_size=3)
    bm.add_request("long", prompts[1], max_new_tokens=400)
    for i in range(4):
        bm.add_request(i, prompts[i], **sampling_for(i))
    streamed = []

    def watcher():
        while bm.status("long").generated_tokens < 3:
            time.sleep(0.001)
        assert bm.cancel("long") is True

    def reader():
        streamed.extend(e.token_id for e in bm.stream(2) if e.token_id is not None)

    threads = [_start(watcher), _start(reader)]
    results = {}
    while len(results) < 5:
        results.update(bm.run())
    for t, errs in threads:
        _join(t, errs)
    assert results["long"].finish_reason == "cancelled" and 3 <= len(results["long"].token_ids) < 400
    assert bm.kv_usage.tokens == 0
    for i in range(4):
        assert results[i].token_ids == references[i][0]
    assert streamed == references[2][0]


def test_infer_batch_from_several_threads(model):
    plugin = model.plugin
    groups = [TEXTS[0:2], TEXTS[2:3], TEXTS[5:7], TEXTS[9:10]]
    expected = [[model.generate(p, max_new_tokens=4) for p in g] for g in groups]
    out = [None] * len(groups)
    barrier = threading.Barrier(len(groups))

    def caller(k):
        barrier.wait()
        out[k] = plugin.infer_batch(groups[k], max_new_tokens=4)

    threads = [_start(caller, k) for k in range(len(groups))]
    for t, errs in threads:
        _join(t, errs)
    assert out == expected
    assert plugin.batch_manager.pending == 0 and plugin.batch_manager.kv_usage.tokens == 0


def test_a_failing_infer_batch_leaves_the_shared_manager_clean(model):
    plugin, bm = model.plugin, model.plugin.batch_manager
    ctx = model.config.max_position_embeddings
    with pytest.raises(errors.ContextLengthError):
        plugin.infer_batch(["Hi", "The capital of France is"], max_new_tokens=ctx - 1)  # the 2nd cannot fit
    assert bm.pending == 0 and bm.kv_usage.tokens == 0
    assert plugin.infer_batch(["Hi"], max_new_tokens=2) == [model.generate("Hi", max_new_tokens=2)]
