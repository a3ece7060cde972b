"""The profiler on the default model: times add up, bytes and FLOPs match the weights, traces
are well formed, and nothing it does changes a result."""
import json

import pytest

from toolkit.core.engine.profile import Profiler

PROMPT = ("The history of the printing press begins with movable type in East Asia and continues "
          "through Gutenberg's workshop in Mainz, where a new kind of book was born.")


def _linears(lm):
    return [mod for _, mod in lm.named_modules() if type(mod).__name__ == "Linear"]


def _matmul_params(lm):
    """Weights every token multiplies: the Linear layers and the output (tied embedding or lm head)."""
    tied = lm.config.tie_word_embeddings
    return sum(mod.weight.numel for mod in _linears(lm)) + (lm.output_weight.numel if tied else 0)


def test_op_times_add_up_to_the_forward_wall_time(model):
    ids = model.tokenizer.encode(PROMPT)
    model.logits(ids[:4])                       # warm: weights paged in, pool started
    with Profiler() as prof:
        model.logits(ids)
    wall, ops = prof.wall_seconds, prof.op_seconds
    assert 0.9 * wall <= ops <= wall, (ops, wall)
    d = prof.to_dict(roofline=False)
    assert d["python_seconds"] == pytest.approx(wall - ops)
    assert sum(r["seconds"] for r in d["by_op"].values()) == pytest.approx(ops)


def test_prefill_flops_match_the_analytic_count(model):
    lm, c = model.model, model.config
    ids = model.tokenizer.encode(PROMPT)
    T = len(ids)
    with Profiler() as prof:
        model.logits(ids)                       # every position's logits: the lm head runs T rows
    counted = sum(r["flops"] for r in prof.by_op().values())
    attention = 4 * c.head_dim * c.num_attention_heads * c.num_hidden_layers * T * (T + 1) // 2
    analytic = 2 * T * _matmul_params(lm) + attention
    assert counted == pytest.approx(analytic, rel=0.01)
    assert prof.by_op()["attention_seqs"]["flops"] == attention


def test_one_decode_step_reads_the_weights_once(model):
    lm, c = model.model, model.config
    ids = model.tokenizer.encode(PROMPT)
    cache = lm.new_cache(len(ids) + 1)
    lm.forward_batch([(ids[:-1], cache)])
    with Profiler() as prof:
        lm.forward_batch([(ids[-1:], cache)])
    ops = prof.by_op()
    weight_bytes = sum(r["weight_bytes"] for r in ops.values())
    read = sum(r["bytes_read"] for r in ops.values())
    emb = lm.embed_tokens.weight
    norms = sum(mod.weight.nbytes for _, mod in lm.named_modules() if type(mod).__name__ == "RMSNorm")
    expected = (sum(mod.weight.nbytes for mod in _linears(lm)) + norms + emb.nbytes // emb.shape[0]
                + (lm.output_weight.nbytes if c.tie_word_embeddings else 0))
    assert weight_bytes == pytest.approx(expected, rel=0.01)
    # the rest is activations and the KV cache: a few percent at this length
    assert expected <= read <= 1.05 * expected


def test_results_are_bit_identical_with_the_profiler_on(model):
    ids = model.tokenizer.encode(PROMPT)[:12]
    off = model.logits(ids).to_list()
    toks_off = model.generate_ids(ids, max_new_tokens=6)
    with Profiler():
        on = model.logits(ids).to_list()
        toks_on = model.generate_ids(ids, max_new_tokens=6)
    assert on == off
    assert toks_on == toks_off


def test_generation_steps_are_the_per_token_rows_and_the_token_events(model):
    with model.profile() as prof:
        events = list(model.stream("Hello there", details=True, max_new_tokens=5, stop_at_eos=False))
    rows = prof.per_token()
    assert [r["phase"] for r in rows] == [e.phase for e in events] == ["prefill"] + ["decode"] * 4
    assert [r["tokens"] for r in rows] == [e.n_input for e in events]
    # one clock: the seconds generation reports for each token are the profiler's step times
    assert [r["seconds"] for r in rows] == [e.seconds for e in events]
    for r in rows:
        assert 0 < r["op_seconds"] <= r["seconds"]
        assert 0 < r["sampling_seconds"] < r["op_seconds"]   # sampling and token probabilities
        assert r["weight_bytes"] > 0


def _check_trace(trace):
    """The trace-event format's required fields, and X slices that nest on each track."""
    assert isinstance(trace["traceEvents"], list) and trace["traceEvents"]
    by_tid = {}
    for e in trace["traceEvents"]:
        for key in ("ph", "pid", "tid", "name", "ts"):
            assert key in e, (key, e)
        assert isinstance(e["name"], str) and isinstance(e["pid"], int) and isinstance(e["tid"], int)
        assert e["ph"] in ("X", "M"), e
        if e["ph"] == "X":
            assert isinstance(e["ts"], (int, float)) and e["ts"] >= 0
            assert isinstance(e["dur"], (int, float)) and e["dur"] >= 0
            by_tid.setdefault(e["tid"], []).append(e)
    for events in by_tid.values():
        stack = []
        for e in sorted(events, key=lambda e: (e["ts"], -e["dur"])):
            end = e["ts"] + e["dur"]
            while stack and stack[-1] <= e["ts"] + 1e-3:
                stack.pop()
            assert not stack or end <= stack[-1] + 1e-3, ("slices overlap without nesting", e)
            stack.append(end)
    return by_tid


def test_chrome_trace_is_well_formed_and_nests(model, tmp_path):
    with model.profile() as prof:
        model.generate("Hello", max_new_tokens=3)
    path = prof.export_chrome_trace(tmp_path / "trace.json")
    with open(path) as f:
        trace = json.load(f)
    by_tid = _check_trace(trace)
    names = {e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "thread_name"}
    assert "generation steps" in names
    ops = [e for events in by_tid.values() for e in events if e.get("cat") == "op"]
    assert len(ops) == sum(r["calls"] for r in prof.by_op().values())
    json.dumps(prof.to_dict())                          # JSON-ready


def test_cli_profile_prints_tables_and_writes_a_trace(smollm2_gguf_path, tmp_path, capsys):
    from toolkit.__main__ import main

    out = tmp_path / "t.json"
    assert main(["profile", "Hi", "--new-tokens", "2", "--model", smollm2_gguf_path, "--trace", str(out)]) == 0
    text = capsys.readouterr().out
    assert "matmul" in text and "GB/s" in text and "tok/s" in text
    with open(out) as f:
        _check_trace(json.load(f))
