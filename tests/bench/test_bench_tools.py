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
    assert kernels.main(["--quick", "--dtypes", "q4_1,BF16", "--layers", "2", "--threads", "2",
                         "--vector-bits", "auto"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"read bandwidth \(512 MiB\): 1 thread [\d.]+ GB/s .*2 threads [\d.]+ GB/s", text)
    rows = _rows(text, {"Q4_1/subnormal", "Q4_1/normal", "BF16"})  # Q4: both unpacking paths
    assert sorted(rows) == ["BF16", "Q4_1/normal", "Q4_1/subnormal"]
    for dtype, lines in rows.items():
        assert [r[0] for r in lines] == [1, 2], dtype              # 1 thread, then 2
        for r in lines:
            assert len(r) == 9 and all(v > 0 for v in r[2:]), (dtype, r)  # every rate measured
    # a busy machine may trip the under-40%-of-bandwidth guard: its lines must name the row and threshold
    for line in text.splitlines():
        if line.startswith("WARNING"):
            assert "under 40%" in line and any(d in line for d in ("Q4_1/", "BF16")), line


def test_kernels_bench_measures_one_q4_path_when_asked(capsys):
    assert kernels.main(["--quick", "--dtypes", "Q4_0", "--layers", "1", "--threads", "1",
                         "--q4-paths", "normal"]) == 0
    assert sorted(_rows(capsys.readouterr().out, {"Q4_0/normal", "Q4_0/subnormal"})) == ["Q4_0/normal"]
    with pytest.raises(SystemExit):
        kernels.main(["--q4-paths", "fastest"])


def test_kernels_bench_compares_both_vector_widths(capsys):
    from toolkit.core.engine import backend as B
    assert kernels.main(["--quick", "--dtypes", "F16", "--layers", "1", "--threads", "1"]) == 0
    text = capsys.readouterr().out
    widths = ["256", "512"] if B.vector_probe()["available"] else ["256"]
    rows = _rows(text, {f"F16/{w}" for w in widths})
    assert sorted(rows) == [f"F16/{w}" for w in widths]
    if len(widths) == 2:  # the ratio table: 512 over 256 for decode, lm head, prefill, packed GEMM
        ratios = _rows(text.split("512-bit over 256-bit")[1], {"F16"})["F16"]
        assert len(ratios) == 1 and len(ratios[0]) == 5 and all(v > 0 for v in ratios[0][1:])
    with pytest.raises(SystemExit):
        kernels.main(["--vector-bits", "384"])


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
