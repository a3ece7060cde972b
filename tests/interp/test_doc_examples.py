"""The cache examples in README.md and docs/hooks.md run as written (a reader copies them first)."""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _cache_example(doc):
    """The `logits, cache = m.run_with_cache(...)` statement (with its continuation lines) and the
    `cache[...]` line after it."""
    lines = (ROOT / doc).read_text(encoding="utf-8").splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.startswith("logits, cache = m.run_with_cache"))
    code = [lines[i]]
    for ln in lines[i + 1:]:
        if ln.startswith(" "):
            code.append(ln)
        else:
            assert ln.startswith("cache["), ln
            code.append(ln)
            return "\n".join(code)


@pytest.mark.parametrize("doc", ["README.md", "docs/hooks.md"])
def test_the_documented_cache_example_runs(model, doc):
    scope = {"m": model}
    exec(_cache_example(doc), scope)  # noqa: S102 - the doc's own code
    assert scope["logits"].shape[1] == model.config.vocab_size
