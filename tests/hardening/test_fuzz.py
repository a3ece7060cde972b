"""The loader fuzzer: a seeded subset in CI, and its oracle (untyped errors, signals, hangs)."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from toolkit.fuzz import __main__ as fuzz
from toolkit.fuzz.mutate import KINDS


def test_seeded_fuzz_subset(tmp_path):
    # 350 cases of every kind, two workers: ~20 s on 2 cores. Each case loads, runs a forward pass
    # and generates, or raises a ToolkitError; a crash, a hang or any other exception fails.
    args = fuzz.parse_args(["--cases", "350", "--seed", "17", "--out", str(tmp_path), "--jobs", "2",
                            "--batch", "50", "--quiet"])
    s = fuzz.Runner(args).run()
    bad = {k: v for k, v in s["counts"].items() if k in fuzz.FAILURES}
    notes = [open(tmp_path / n).read()[:2000] for n in sorted(os.listdir(tmp_path)) if n.endswith(".txt")]
    assert not bad and not s["failures"] and not s["harness_errors"], "\n\n".join(notes)
    assert s["cases"] == 350
    assert s["counts"].get("ok", 0) > 20 and s["counts"].get("typed", 0) > 200
    assert set(s["by_kind"]) == set(KINDS)
    assert json.load(open(tmp_path / "summary.json"))["cases"] == 350


def test_worker_reports_untyped_exceptions(tmp_path, monkeypatch, capsys):
    def boom(path):
        raise ZeroDivisionError("not a ToolkitError")

    monkeypatch.setattr(fuzz, "run_case", boom)
    fuzz.worker(1, 0, 2, str(tmp_path), "gguf_bytes")
    msgs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    ends = [m for m in msgs if "end" in m]
    assert [m["status"] for m in ends] == ["untyped", "untyped"]
    assert "ZeroDivisionError" in ends[0]["detail"]
    assert os.path.exists(msgs[0]["path"])  # the input is kept for the report


@pytest.mark.parametrize("behaviour,status", [("os.kill(os.getpid(), signal.SIGSEGV)", "signal"),
                                              ("time.sleep(60)", "hang")])
def test_runner_isolates_crashes_and_hangs(tmp_path, monkeypatch, behaviour, status):
    """A worker that dies or stalls mid-case costs that case only; the runner goes on after it."""
    args = fuzz.parse_args(["--cases", "3", "--out", str(tmp_path / "out"), "--jobs", "1", "--timeout", "2",
                            "--quiet"])
    runner = fuzz.Runner(args)
    case_file = tmp_path / "input.bin"
    case_file.write_bytes(b"broken")

    def spawn(start, stop):
        script = textwrap.dedent(f"""
            import json, os, signal, sys, time
            for i in range({start}, {stop}):
                print(json.dumps({{"start": i, "kind": "k", "path": {str(case_file)!r}, "ops": []}}), flush=True)
                if i == 1:
                    {behaviour}
                print(json.dumps({{"end": i, "status": "typed", "detail": "FormatError: x"}}), flush=True)
        """)
        return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)

    monkeypatch.setattr(runner, "_spawn", spawn)
    s = runner.run()
    assert s["counts"] == {"typed": 2, status: 1} and s["failures"] == [1]
    saved = sorted(os.listdir(tmp_path / "out"))
    assert f"{status}-0-1-k.bin" in saved and f"{status}-0-1-k.txt" in saved


FUZZ_DATA = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "fuzz")
SAVED = sorted(n for n in os.listdir(FUZZ_DATA) if n != "README.md")


@pytest.mark.parametrize("name", SAVED)
def test_saved_fuzz_inputs(name):
    from toolkit.errors import ToolkitError

    try:
        fuzz.run_case(os.path.join(FUZZ_DATA, name))
    except ToolkitError:
        pass
