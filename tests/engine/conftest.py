"""Engine tests change the thread count, SIMD switch, Q4 path and vector width; every test gets them back as they were."""
import pytest

from toolkit.core.engine import backend as B


@pytest.fixture(autouse=True)
def _restore_engine_settings():
    threads, simd, q4, bits = B.get_threads(), B.get_simd(), B.q4_probe()["setting"], B.vector_probe()["setting"]
    yield
    B.set_vector_bits(bits)
    B.set_threads(threads)
    B.set_simd(simd)
    B.set_q4_path(q4)
