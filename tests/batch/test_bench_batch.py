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


def test_batch_bench_can_turn_invariance_off_for_the_run(capsys):
    from toolkit.core.engine import backend

    assert batch.main(["--sizes", "2", "--new", "2", "--prompt", "3", "--repeats", "1", "--no-peer",
                       "--not-invariant"]) == 0
    assert "batch invariance OFF" in capsys.readouterr().out
    assert backend.get_batch_invariant() is True  # restored


def test_batch_bench_rejects_bad_sizes():
    with pytest.raises(SystemExit):
        batch.main(["--sizes", "1,x"])
    with pytest.raises(SystemExit):
        batch.main(["--sizes", "0"])
