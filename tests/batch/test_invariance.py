"""Batch invariance: a request's tokens and logits do not depend on what shares its passes, on the
batch size, on joining mid-flight, or on chunked prefill: bit for bit equal to running it alone."""
import pytest

from toolkit.common.managers.batch_manager import BatchManager

from batch_helpers import alone, row_bytes, sampling_for


def test_engine_batch_invariance_is_on_by_default():
    from toolkit.core.engine import backend

    assert backend.get_batch_invariant() is True  # what makes every matmul row independent of M


def test_references_match_generate(model, prompts, references):
    # the reference runner is the library's own generation, logits aside
    for i in (0, 1, 3):
        assert references[i][0] == model.generate_ids(prompts[i], **sampling_for(i))


@pytest.mark.parametrize("batch", [1, 3, 8, 16])
def test_batch_is_bit_identical_to_alone(model, prompts, references, batch):
    bm = BatchManager(model.model, max_batch_size=batch, prefill_chunk=7)
    first = (batch + 1) // 2
    for i in range(first):
        bm.add_request(i, prompts[i], keep_logits=True, **sampling_for(i))
    bm.forward_step()
    bm.forward_step()  # the first ones are mid-prefill or decoding when the rest join
    for i in range(first, batch):
        bm.add_request(i, prompts[i], keep_logits=True, **sampling_for(i))
    results = bm.run()
    assert sorted(results) == list(range(batch))
    for i in range(batch):
        toks, rows = references[i]
        assert results[i].token_ids == toks, f"request {i} in a batch of {batch}"
        assert [row_bytes(r) for r in results[i].logits] == rows, f"request {i} logits in a batch of {batch}"


def test_chunk_sizes_and_queueing_do_not_change_a_bit(model, prompts, references):
    # a long prompt cut at every chunk size from 1 token up, beside requests that come and go
    long = 3
    for chunk in (1, 6):
        bm = BatchManager(model.model, max_batch_size=3, prefill_chunk=chunk)
        for i in (long, 0, 1, 2):
            bm.add_request(i, prompts[i], keep_logits=True, **sampling_for(i))
        results = bm.run()
        for i in (long, 0, 1, 2):
            assert results[i].token_ids == references[i][0], (chunk, i)
            assert [row_bytes(r) for r in results[i].logits] == references[i][1], (chunk, i)


def test_longer_generation_in_a_full_batch(model, prompts):
    # 8 at once, staggered max_new_tokens so requests leave one by one and the batch shrinks
    lm = model.model
    bm = BatchManager(lm, max_batch_size=8, prefill_chunk=16)
    for i in range(8):
        bm.add_request(i, prompts[i], keep_logits=True, **sampling_for(i, max_new_tokens=2 + i))
    results = bm.run()
    for i in range(8):
        toks, rows = alone(lm, prompts[i], **sampling_for(i, max_new_tokens=2 + i))
        assert results[i].token_ids == toks and [row_bytes(r) for r in results[i].logits] == rows, i
