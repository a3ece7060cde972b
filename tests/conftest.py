"""Shared fixtures: the real default model, fetched once into the user cache."""
import json
import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
DATA = os.path.join(os.path.dirname(__file__), "data")


@pytest.fixture(scope="session")
def smollm2_gguf_path():
    from toolkit.common.hub import default_model_path

    return str(default_model_path(progress=False))


@pytest.fixture(scope="session")
def model(smollm2_gguf_path):
    import toolkit

    m = toolkit.load(smollm2_gguf_path)
    yield m
    m.close()


@pytest.fixture(scope="session")
def golden_logits():
    with open(os.path.join(DATA, "golden", "logits_public.json")) as f:
        return json.load(f)


@pytest.fixture(scope="session")
def golden_hidden():
    with open(os.path.join(DATA, "golden", "hidden.json")) as f:
        return json.load(f)


@pytest.fixture(scope="session")
def golden_tokenization():
    with open(os.path.join(DATA, "golden", "tokenization_public.json")) as f:
        return json.load(f)
