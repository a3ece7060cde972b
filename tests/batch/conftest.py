"""Fixtures of the BatchManager tests."""
import pytest
from batch_helpers import TEXTS, alone, sampling_for


@pytest.fixture(scope="session")
def prompts(model):
    return [model.tokenizer.encode(t) for t in TEXTS]


@pytest.fixture(scope="session")
def references(model, prompts):
    """Alone-outputs of every prompt with its sampling settings (4 new tokens)."""
    return [alone(model.model, p, **sampling_for(i)) for i, p in enumerate(prompts)]
