"""Fixtures for the tests of toolkit.common (smollm2_gguf_path and golden_tokenization come from
tests/conftest.py)."""

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent.parent / "data"


@pytest.fixture(scope="session")
def llama2_model_path():
    return DATA / "llama2-tokenizer.model"
