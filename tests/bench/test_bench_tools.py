"""The benchmark commands run end to end and print their tables (speed itself is never asserted:
the numbers belong in the benchmarks' own output, compared within one run)."""
import re

import pytest

from toolkit.bench import generate, kernels
from toolkit.core.engine import backend as B


@pytest.fixture(autouse=True)
def _restore_threads():
    n = B.get_threads()
    yield
    B.set_threads(n)


def _rows(text, names):
    """{name: [numbers]} for the table rows that start with one of names."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] in names:
            out.setdefault(parts[0], []).append([float(v.rstrip("%x")) for v in parts[1:]])
    return out


def test_kernels_bench_prints_every_dtype_and_thread_count(capsys):
    assert kernels.main(["--quick", "--dtypes", "q4_1,BF16", "--layers", "2", "--threads", "2"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"read bandwidth \(512 MiB\): 1 thread [\d.]+ GB/s .*2 threads [\d.]+ GB/s", text)
    rows = _rows(text, {"Q4_1", "BF16"})
    assert sorted(rows) == ["BF16", "Q4_1"]
    for dtype, lines in rows.items():
        assert [r[0] for r in lines] == [1, 2], dtype              # 1 thread, then 2
        for r in lines:
            assert len(r) == 8 and all(v > 0 for v in r[2:]), (dtype, r)  # every rate measured


def test_kernels_bench_rejects_unknown_dtypes_and_layer_counts(capsys):
    with pytest.raises(SystemExit):
        kernels.main(["--dtypes", "Q4_1,Q5_K"])
    assert "Q5_K" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        kernels.main(["--layers", "0"])


def test_generate_bench_runs_on_the_default_model(smollm2_gguf_path, capsys):
    generate.main(["--model", smollm2_gguf_path, "--prefill", "16", "--decode", "4", "--repeats", "1",
                   "--threads", "2", "--no-peer"])
    text = capsys.readouterr().out
    assert "prefill 16 tokens, decode 4 tokens" in text
    (row,) = _rows(text, {"cengine-toolkit"})["cengine-toolkit"]
    assert len(row) == 2 and row[0] > 0 and row[1] > 0
