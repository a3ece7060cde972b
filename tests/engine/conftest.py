"""Engine tests change the thread count and SIMD switch; every test gets them back as they were."""
import pytest

from toolkit.core.engine import backend as B


@pytest.fixture(autouse=True)
def _restore_engine_settings():
    threads, simd = B.get_threads(), B.get_simd()
    yield
    B.set_threads(threads)
    B.set_simd(simd)
