"""Fixtures: the tiny synthetic model (toolkit.fuzz.tiny) as a GGUF file and an HF directory."""
import pytest

import toolkit
from toolkit.fuzz import tiny


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory):
    return tiny.write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf")


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory):
    return tiny.write_tiny_hf_dir(tmp_path_factory.mktemp("tiny") / "hf")


@pytest.fixture
def tiny_model(tiny_gguf):
    m = toolkit.load(tiny_gguf, threads=1)
    yield m
    m.close()
