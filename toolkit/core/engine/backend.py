"""The backend that model plugins import: tensors, modules and ops over the C engine.

    from toolkit.core.engine.backend import Module, Tensor, Linear, RMSNorm, scaled_dot_product_attention

Engine settings (threads, SIMD on/off for reference runs, build info) live here too.
"""
from toolkit import errors

from . import functional
from . import functional as F
from ._lib import check, ffi, lib
from .functional import (add, argmax, copy_, copy_rows_, embedding, gelu, linear, matmul, matmul_n, mul,
                         repetition_penalty_, rms_norm, rope_, sample, scale, scaled_dot_product_attention,
                         silu, silu_mul, softmax, topk)
from .modules import Embedding, Linear, Module, ModuleList, RMSNorm
from .tensor import Tensor

__all__ = [
    "Tensor", "Module", "Linear", "RMSNorm", "Embedding", "ModuleList", "F", "functional",
    "scaled_dot_product_attention", "matmul", "matmul_n", "linear", "embedding", "rms_norm", "rope_", "softmax",
    "silu", "gelu", "silu_mul", "add", "mul", "scale", "argmax", "topk", "copy_", "copy_rows_", "sample",
    "repetition_penalty_",
    "set_threads", "get_threads", "set_simd", "get_simd", "build_info", "engine_version", "bench_read_bandwidth",
]


def set_threads(n):
    """Sets the engine's worker-thread count (default: all cores). Results do not depend on it."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise errors.ArgumentTypeError(f"thread count must be an int, got {type(n).__name__}")
    check(lib.ce_set_threads(n))


def get_threads():
    return lib.ce_get_threads()


def default_threads():
    return lib.ce_default_threads()


def set_simd(enabled):
    """False selects the scalar reference kernels (for tests); True the SIMD ones where available."""
    lib.ce_set_simd(1 if enabled else 0)


def get_simd():
    return bool(lib.ce_get_simd())


def build_info():
    return ffi.string(lib.ce_build_info()).decode()


def engine_version():
    return ffi.string(lib.ce_version()).decode()


def bench_read_bandwidth(nbytes=512 << 20, reps=2):
    """Best seconds for one streaming read of an nbytes buffer over all pool threads (a benchmark
    baseline: nbytes / seconds is the machine's read bandwidth)."""
    s = lib.ce_bench_read_bandwidth(nbytes, reps)
    if s <= 0:
        raise errors.EngineError(ffi.string(lib.ce_last_error()).decode() or "bandwidth benchmark failed")
    return s
