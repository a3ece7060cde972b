"""Every notebook in notebooks/ runs top to bottom in a fresh kernel, writes its manifest, and that
manifest passes `python -m toolkit repro check`; notebooks 03 and 04 must also show their findings.

nbclient runs in a child process (run_notebook.py). The kernel is this interpreter (a kernelspec
written into a temporary JUPYTER_PATH), so CI's venv runs the notebooks, whatever `python` means on
PATH. Each notebook runs in its own temporary directory, as a new user would from a fresh checkout.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CELL_TIMEOUT = 240       # seconds per cell: generous for a loaded CI machine, a hang still ends
NOTEBOOK_TIMEOUT = 900   # the whole notebook, kernel start included


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """JUPYTER_PATH with a kernelspec that starts this interpreter; PYTHONPATH with this checkout."""
    share = tmp_path_factory.mktemp("jupyter")
    spec = share / "kernels" / "toolkit-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "toolkit tests", "language": "python"}))
    env = {"JUPYTER_PATH": str(share) + os.pathsep + os.environ.get("JUPYTER_PATH", ""),
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield "toolkit-test"
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_notebooks_are_built_from_their_sources():
    r = subprocess.run([sys.executable, str(ROOT / "notebooks" / "_build.py"), "--check"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_clean(path):
    nb = nbformat.read(path, as_version=4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "one cell tagged 'parameters' (papermill)"
    assert any(line.startswith("seed") for line in params[0].source.splitlines())
    assert any(line.startswith("out_dir") for line in params[0].source.splitlines())
    for c in nb.cells:
        if c.cell_type == "code":
            assert c.outputs == [] and c.execution_count is None, "outputs are cleared in git"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_reproduces(path, kernel_env, tmp_path):
    r = subprocess.run([sys.executable, str(Path(__file__).with_name("run_notebook.py")), str(path), str(tmp_path),
                        kernel_env, str(CELL_TIMEOUT)], capture_output=True, text=True, timeout=NOTEBOOK_TIMEOUT)
    assert r.returncode == 0, f"{path.name} failed:\n{r.stderr[-6000:]}"
    nb = nbformat.read(tmp_path / "executed.ipynb", as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    assert all(c.execution_count for c in nb.cells if c.cell_type == "code"), "every code cell ran"
    blind = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
             if str(o.get("data", {}).get("text/plain", "")).startswith("<Figure") and "image/png" not in o["data"]]
    assert not blind, "a figure was displayed as text only (no inline backend: %matplotlib inline)"
    panels = [o["data"]["text/html"] for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if "tk-output" in str(o.get("data", {}).get("text/html", ""))]
    assert all('class="tk-tok"' in p for p in panels), "a generation widget was saved without its reply"
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    scope = {}
    exec(params.source, scope)
    manifest = tmp_path / scope["out_dir"] / "manifest.json"
    assert manifest.is_file(), f"{path.name} wrote no manifest at {scope['out_dir']}"
    r = subprocess.run([sys.executable, "-m", "toolkit", "repro", "check", str(manifest)], capture_output=True,
                       text=True, cwd=tmp_path, env={**os.environ}, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "reproduces" in r.stdout
    check = FINDINGS.get(path.stem)
    if check:
        check(json.loads(manifest.read_text())["extra"])


def _induction_heads_stand_out(extra):
    # a measurement on the real model: the best head's score is far above the median head's
    assert extra["top_score"] > 5 * extra["median_score"], extra
    assert extra["loss_second_half"] < extra["loss_first_half"], extra


def _ablating_induction_heads_hurts_most(extra):
    # zeroing the top induction heads raises the repeated-half loss more than random sets do
    assert extra["loss_increase_top"] > 2 * max(extra["loss_increase_random_mean"], 0.0), extra
    assert extra["steering"]["steered"] != extra["steering"]["plain"]


def _the_lens_echoes_only_at_the_embeddings(extra):
    # what notebook 02's markdown says of the default prompt's logit lens
    echo, agree = extra["lens_echo_by_layer"], extra["lens_agrees_with_output_by_layer"]
    layers = len(echo)
    assert echo[0] >= 5 and max(echo[1:]) == 0, echo
    assert max(agree[1:layers // 2]) <= 1 and agree[-1] == max(agree), agree
    assert int(extra["answer_first_layer"].split("_")[0]) >= 2 * layers // 3, extra["answer_first_layer"]


def _the_harmful_random_set_is_not_explained_by_previous_token_heads(extra):
    # what notebook 04's markdown says: one early head does nearly all of the worst random set's
    # damage, and it is not a strong previous-token head
    worst = extra["worst_random_set"]
    culprit = max(worst, key=lambda k: worst[k]["loss_increase_alone"])
    total = max(extra["loss_random_ablated"]) - extra["loss_base"]
    assert culprit == "L1.H4" and worst[culprit]["loss_increase_alone"] > 0.8 * total, worst
    assert worst[culprit]["prev_token_score"] < 0.2 and not extra["worst_random_culprit_is_prev_token_head"]
    assert min(s for _, _, s in extra["prev_token_top"][:5]) > 0.6, extra["prev_token_top"]


def _ablation_and_its_explanation(extra):
    _ablating_induction_heads_hurts_most(extra)
    _the_harmful_random_set_is_not_explained_by_previous_token_heads(extra)


FINDINGS = {"02_activations": _the_lens_echoes_only_at_the_embeddings, "03_induction_heads": _induction_heads_stand_out,
            "04_interventions": _ablation_and_its_explanation}


def test_what_the_notebooks_write_is_ignored_by_git():
    # run from notebooks/ (jupyter lab notebooks/), they write manifests, a trace and notebook 06's
    # plugin package and weights under results/: docs/notebooks.md says git ignores them
    r = subprocess.run(["git", "check-ignore", "-q", "notebooks/results/06_write_a_plugin/tinylm-random/model.safetensors",
                        "results/01_quickstart/manifest.json"], cwd=ROOT, capture_output=True)
    if r.returncode == 128:  # not a git checkout (an unpacked sdist): the rule is in .gitignore
        assert "results/" in (ROOT / ".gitignore").read_text().split()
    else:
        assert r.returncode == 0, "results/ is not in .gitignore"
