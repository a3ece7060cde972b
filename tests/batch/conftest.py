"""Fixtures of the BatchManager tests. Each module gets its own model, closed when the module ends:
tests elsewhere (tests/hardening) check that the weight file is unmapped once every model on it is
closed, and a session-wide model here would keep it mapped. Prompts and reference outputs are plain
data, computed once on a model of their own."""
import pytest
from batch_helpers import TEXTS, alone, sampling_for


@pytest.fixture(scope="module")
def model(smollm2_gguf_path):
    import toolkit

    m = toolkit.load(smollm2_gguf_path)
    yield m
    m.close()


@pytest.fixture(scope="session")
def prompts(smollm2_gguf_path):
    import toolkit

    with toolkit.load(smollm2_gguf_path) as m:
        return [m.tokenizer.encode(t) for t in TEXTS]


@pytest.fixture(scope="session")
def references(smollm2_gguf_path, prompts):
    """Alone-outputs (token ids, logits rows as bytes) of every prompt with its sampling settings."""
    import toolkit

    with toolkit.load(smollm2_gguf_path) as m:
        return [alone(m.model, p, **sampling_for(i)) for i, p in enumerate(prompts)]
