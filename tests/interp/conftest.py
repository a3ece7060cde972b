import pytest


@pytest.fixture(autouse=True)
def no_hooks_left(model):
    """Every test starts and ends with no hook registered."""
    assert model.model.hook_set.active == {}
    yield
    left = dict(model.model.hook_set.active)
    model.remove_hooks()
    assert left == {}
