"""Fixtures for the tests of toolkit.common (golden_tokenization comes from tests/conftest.py)."""

from pathlib import Path

import pytest

import toolkit.common.hub

DATA = Path(__file__).resolve().parent.parent / "data"


@pytest.fixture(scope="session")
def smollm2_gguf_path():
    return toolkit.common.hub.default_model_path()


@pytest.fixture(scope="session")
def llama2_model_path():
    return DATA / "llama2-tokenizer.model"
