"""Regions: ops land in the module (hook path) that ran them, in plain, generating and batched passes."""
import json

import pytest

from toolkit.core.engine import functional as F
from toolkit.core.engine import modules
from toolkit.core.engine.modules import Module
from toolkit.core.engine.profile import Profiler
from toolkit.core.engine.tensor import Tensor

PROMPT = "The history of the printing press begins with movable type in East Asia"


def _own_ops(prof):
    """{region id path or '(outside modules)': {op: calls}} from the event log (own ops only)."""
    out = {}
    for ev in prof._events:
        op, region = ev[0], ev[1]
        name = prof._regions[region - 1] if region else "(outside modules)"
        d = out.setdefault(name, {})
        from toolkit.core.engine.profile import OPS

        d[OPS[op]] = d.get(OPS[op], 0) + 1
    return out


def test_forward_regions_are_hook_paths_with_their_ops(model):
    L = model.config.num_hidden_layers
    ids = model.tokenizer.encode(PROMPT)
    with Profiler() as prof:
        model.logits(ids)
    layers = prof.by_layer()
    for name in ["embed", "ln_final", "unembed"] + [f"blocks.{i}{s}" for i in range(L)
                                                   for s in ("", ".ln1", ".attn", ".ln2", ".mlp")]:
        assert layers[name]["calls"] == 1, name
    own = _own_ops(prof)
    assert set(own["embed"]) == {"embedding"}
    assert set(own["blocks.3.attn"]) == {"matmul_n", "rope", "attention_seqs", "matmul"}
    assert set(own["blocks.3.mlp"]) == {"matmul_n", "silu_mul", "matmul"}
    assert set(own["blocks.3.ln1"]) == {"rmsnorm"}
    assert set(own["unembed"]) == {"matmul"}
    # inclusive sums: a block holds its sublayers; nothing is lost or counted twice
    b = layers["blocks.3"]
    subs = sum(layers[f"blocks.3.{s}"]["op_seconds"] for s in ("ln1", "attn", "ln2", "mlp"))
    assert subs <= b["op_seconds"] <= b["seconds"]
    tops = [r for r in layers.values() if r["parent"] is None]
    assert sum(r["op_seconds"] for r in tops) == pytest.approx(prof.op_seconds, rel=1e-9)
    assert sum(r["flops"] for r in tops) == sum(r["flops"] for r in prof.by_op().values())
    assert modules._call_observer is None          # handed back when the profile stopped


def test_generation_counts_each_pass_in_each_region_and_sampling_outside(model):
    with model.profile() as prof:
        ids = model.generate_ids("Hello", max_new_tokens=4, stop_at_eos=False)
    passes = len(ids)                                # the prefill, then one pass per token but the last
    layers = prof.by_layer()
    assert layers["blocks.0.attn"]["calls"] == passes
    assert layers["unembed"]["calls"] == passes
    outside = _own_ops(prof)["(outside modules)"]
    assert outside["sample"] == len(ids)            # sampling, and loading ids (convert): no layer math
    assert set(outside) <= {"sample", "convert"}
    rows = prof.per_token()
    assert len(rows) == passes
    inside = sum(r["op_seconds"] for r in rows)          # sampling runs inside the steps
    assert inside == pytest.approx(prof.op_seconds, rel=0.02)


def test_batched_pass_puts_each_sequences_attention_in_its_layer(model):
    lm = model.model
    a = model.tokenizer.encode(PROMPT)
    b = model.tokenizer.encode("Hello there")
    with Profiler() as prof:
        lm.forward_batch([(a, lm.new_cache(len(a))), (b, lm.new_cache(len(b)))], logits="last")
    own = _own_ops(prof)
    for i in range(model.config.num_hidden_layers):
        attn = own[f"blocks.{i}.attn"]
        assert attn["attention_seqs"] == 1, (i, attn)  # both sequences' cache writes and attention
        assert attn["matmul_n"] == 1                 # the projections run once over both sequences' rows
        assert prof.by_layer()[f"blocks.{i}"]["calls"] == 1
    T = len(a) + len(b)
    c = model.config
    keys = len(a) * (len(a) + 1) // 2 + len(b) * (len(b) + 1) // 2
    assert prof.by_op()["attention_seqs"]["flops"] == 4 * c.head_dim * c.num_attention_heads * c.num_hidden_layers * keys
    assert prof.by_layer()["blocks.0.mlp"]["flops"] == 2 * T * 3 * c.hidden_size * c.intermediate_size + 5 * T * c.intermediate_size


def test_ops_sit_inside_their_region_slices_in_the_trace(model, tmp_path):
    with model.profile() as prof:
        model.generate("Hi", max_new_tokens=2)
    trace = json.loads(open(prof.export_chrome_trace(tmp_path / "t.json")).read())
    names = {e["tid"]: e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "thread_name"}
    assert {"embed", "blocks.0", "blocks.29", "unembed", "generation steps"} <= set(names.values())
    regions = {}
    for e in trace["traceEvents"]:
        if e.get("cat") == "region":
            regions.setdefault(e["tid"], []).append(e)
    for e in trace["traceEvents"]:
        if e.get("cat") != "op" or names[e["tid"]] == "ops outside modules":
            continue
        assert any(r["ts"] - 1e-3 <= e["ts"] and e["ts"] + e["dur"] <= r["ts"] + r["dur"] + 1e-3
                   for r in regions[e["tid"]]), e


class _Inner(Module):
    def forward(self, x):
        return F.add(x, x)


class _Outer(Module):
    def __init__(self):
        super().__init__()
        self.inner = _Inner()

    def forward(self, x, fail=False):
        F.scale(x, 2.0)
        y = self.inner(x)
        if fail:
            raise ValueError("boom")
        return y


def test_regions_close_when_a_module_raises():
    m = _Outer()
    m.hook_path, m.inner.hook_path = "outer", "outer.inner"
    x = Tensor.from_list([1.0] * 8)
    with Profiler() as prof:
        with pytest.raises(ValueError):
            m(x, fail=True)
        F.mul(x, x)                                  # after the failure: outside every region again
    own = _own_ops(prof)
    assert own == {"outer": {"scale": 1}, "outer.inner": {"add": 1}, "(outside modules)": {"mul": 1}}
    layers = prof.by_layer()
    assert layers["outer"]["calls"] == 1 and layers["outer.inner"]["calls"] == 1
    assert layers["outer.inner"]["parent"] == "outer"


def test_a_profile_started_inside_a_module_keeps_its_regions_consistent():
    m = _Outer()
    m.hook_path, m.inner.hook_path = "outer", "outer.inner"
    x = Tensor.from_list([1.0] * 8)
    profs = []

    class _Starter(Module):
        def forward(self, x):
            profs.append(Profiler().start())       # starts while "starter" is running
            return m(x)

    s = _Starter()
    s.hook_path = "starter"
    s(x)                                           # its exit is not the profile's to record
    profs[0].stop()
    layers = profs[0].by_layer()
    assert set(layers) == {"outer", "outer.inner"}
    assert layers["outer"]["calls"] == 1


def test_threads_count_apart_and_keep_their_own_regions():
    import threading

    m = _Outer()
    m.hook_path, m.inner.hook_path = "outer", "outer.inner"
    x = Tensor.from_list([1.0] * 8)
    y = Tensor.from_list([2.0] * 8)
    go = threading.Barrier(2)

    def in_module():
        go.wait()
        for _ in range(300):
            m(x)                                   # scale in "outer", add in "outer.inner"

    def bare():
        go.wait()
        for _ in range(300):
            F.mul(y, y, out=y)

    with Profiler() as prof:
        ts = [threading.Thread(target=in_module), threading.Thread(target=bare)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    ops = prof.by_op()
    assert ops["scale"]["calls"] == ops["add"]["calls"] == ops["mul"]["calls"] == 300
    assert _own_ops(prof) == {"outer": {"scale": 300}, "outer.inner": {"add": 300},
                              "(outside modules)": {"mul": 300}}
    assert len({ev[2] for ev in prof._events}) == 2  # two recording threads
