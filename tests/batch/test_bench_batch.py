"""`python -m toolkit.bench batch` runs end to end and prints a row per batch size (speed itself is
never asserted here)."""
import pytest

from toolkit.bench import batch
from toolkit.bench.__main__ import main as bench_main


def test_batch_bench_prints_a_row_per_size(capsys):
    assert bench_main(["batch", "--sizes", "1,3", "--new", "3", "--prompt", "5", "--repeats", "1", "--no-peer"]) == 0
    text = capsys.readouterr().out
    assert "CPU " in text and "medians of 1" in text
    rows = {int(line.split()[0]): line.split()[1:] for line in text.splitlines()
            if line.split() and line.split()[0].isdigit()}
    assert sorted(rows) == [1, 3]
    assert float(rows[1][0]) > 0 and rows[1][1] == "1.00x" and float(rows[3][1].rstrip("x")) > 0


def test_batch_bench_compares_with_the_packed_gemm(capsys):
    from toolkit.core.engine import backend

    assert batch.main(["--sizes", "1,2", "--new", "2", "--prompt", "3", "--repeats", "1", "--no-peer",
                       "--compare-gemm"]) == 0
    text = capsys.readouterr().out
    assert "batch invariance on" in text and "GEMM tok/s" in text
    row = [line.split() for line in text.splitlines() if line.split()[:1] == ["2"]][0]
    assert len(row) == 5 and float(row[3]) > 0  # sequences, ours, vs batch 1, GEMM, ours/GEMM
    assert backend.get_batch_invariant() is True  # restored


def test_batch_bench_rejects_bad_sizes():
    with pytest.raises(SystemExit):
        batch.main(["--sizes", "1,x"])
    with pytest.raises(SystemExit):
        batch.main(["--sizes", "0"])


class _FakeLlamaCpp:
    """Just enough of llama-cpp-python's low-level API to drive the peer path of the benchmark."""

    def __init__(self):
        self.decoded = []  # per llama_decode: [(token, pos, seq, logits)]

        class Llama:
            def __init__(self, **kw):
                self.model = "model-handle"

        self.Llama = Llama

    def llama_context_default_params(self):
        import types

        return types.SimpleNamespace()

    def llama_init_from_model(self, model, params):
        assert model == "model-handle" and params.n_seq_max >= 1
        return "ctx"

    def llama_sampler_init_greedy(self):
        return "greedy"

    def llama_get_memory(self, ctx):
        return "mem"

    def llama_memory_clear(self, mem, data):
        self.decoded.append("clear")

    def llama_batch_init(self, n, embd, n_seq):
        import types

        return types.SimpleNamespace(token=[0] * n, pos=[0] * n, n_seq_id=[0] * n, seq_id=[[0] for _ in range(n)],
                                     logits=[False] * n, n_tokens=0)

    def llama_batch_free(self, batch):
        pass

    def llama_decode(self, ctx, b):
        self.decoded.append([(b.token[i], b.pos[i], b.seq_id[i][0], bool(b.logits[i])) for i in range(b.n_tokens)])
        return 0

    def llama_sampler_sample(self, smpl, ctx, i):
        return 1000 + i


def test_batch_bench_drives_llama_cpp_batched_decode(monkeypatch, capsys):
    import sys

    fake = _FakeLlamaCpp()
    monkeypatch.setitem(sys.modules, "llama_cpp", fake)
    assert batch.main(["--sizes", "1,2", "--new", "3", "--prompt", "4", "--repeats", "1"]) == 0
    text = capsys.readouterr().out
    assert "llama.cpp tok/s" in text and "ours/llama.cpp" in text
    last = fake.decoded[fake.decoded.index("clear", len(fake.decoded) - 4):]  # the batch-2 run
    prefill, *steps = last[1:]
    assert [(pos, seq, lg) for _, pos, seq, lg in prefill] == [
        (p, s, p == 3) for s in range(2) for p in range(4)]  # both prompts, logits at each last token
    assert len(steps) == 2  # 3 new tokens: drawn from the prefill, then after 2 decodes
    # each sequence is fed the token drawn from its own logits row (the fake draws 1000 + row)
    assert steps[0] == [(1003, 4, 0, True), (1007, 4, 1, True)]
    assert steps[1] == [(1000, 5, 0, True), (1001, 5, 1, True)]
