"""Builds notebooks/NN_name.ipynb from notebooks/src/NN_name.py (outputs empty, ready for git).

The sources are plain Python in the "percent" cell format, so they diff and review like code:

    # %% [markdown]
    # # A heading
    # %% tags=["parameters"]
    seed = 0
    # %%
    print(seed)

Run `python notebooks/_build.py` after editing a source; `--check` exits 1 if any .ipynb is stale
(tests/notebooks runs that check).
"""
import json
import re
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
_MARK = re.compile(r"^# %%(?P<md> \[markdown\])?(?: tags=(?P<tags>\[.*\]))?\s*$")


def parse(text):
    """[(kind, source, tags)] of the cells in a percent-format source."""
    cells, kind, tags, lines = [], None, [], []

    def flush():
        if kind is None:
            return
        body = list(lines)
        while body and not body[-1].strip():
            body.pop()
        if kind == "markdown":
            body = [ln[2:] if ln.startswith("# ") else ln.lstrip("#") for ln in body]
        cells.append((kind, "\n".join(body), tags))

    for line in text.splitlines():
        m = _MARK.match(line)
        if m:
            flush()
            kind = "markdown" if m.group("md") else "code"
            tags = json.loads(m.group("tags")) if m.group("tags") else []
            lines = []
        elif kind is not None:
            lines.append(line)
    flush()
    return cells


def build(src):
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for i, (kind, source, tags) in enumerate(parse(Path(src).read_text())):
        cell = new_markdown_cell(source) if kind == "markdown" else new_code_cell(source)
        cell["id"] = f"{Path(src).stem[:2]}-{i:03d}"  # stable ids: rebuilding changes nothing
        if tags:
            cell.metadata["tags"] = tags
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nbformat.writes(nb) + "\n"


def main(argv):
    stale = []
    for src in sorted((HERE / "src").glob("[0-9][0-9]_*.py")):
        out = HERE / f"{src.stem}.ipynb"
        text = build(src)
        if out.exists() and out.read_text() == text:
            continue
        stale.append(out.name)
        if "--check" not in argv:
            out.write_text(text)
    if "--check" in argv and stale:
        print("stale notebooks (run python notebooks/_build.py):", ", ".join(stale))
        return 1
    for name in stale:
        print("wrote", name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
