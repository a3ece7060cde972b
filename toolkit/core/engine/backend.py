"""The backend that model plugins import: tensors, modules and ops over the C engine.

    from toolkit.core.engine.backend import Module, Tensor, Linear, RMSNorm, scaled_dot_product_attention

Engine settings (threads, SIMD on/off for reference runs, build info) live here too.
"""
import os

from toolkit import errors

from . import functional
from . import functional as F
from ._lib import check, ffi, lib
from .functional import (KVSet, add, argmax, attention_seqs, copy_, copy_rows_, embedding, gelu, linear, matmul, matmul_n, mul,
                         repetition_penalty_, rms_norm, rope_, sample, scale, scaled_dot_product_attention,
                         silu, silu_mul, softmax, topk)
from .modules import Embedding, Linear, Module, ModuleList, RMSNorm
from .tensor import Tensor

__all__ = [
    "Tensor", "Module", "Linear", "RMSNorm", "Embedding", "ModuleList", "F", "functional",
    "scaled_dot_product_attention", "attention_seqs", "KVSet", "matmul", "matmul_n", "linear", "embedding", "rms_norm", "rope_", "softmax",
    "silu", "gelu", "silu_mul", "add", "mul", "scale", "argmax", "topk", "copy_", "copy_rows_", "sample",
    "repetition_penalty_",
    "set_threads", "get_threads", "set_simd", "get_simd", "set_q4_path", "get_q4_path", "q4_probe",
    "set_batch_invariant", "get_batch_invariant", "set_vector_bits", "get_vector_bits", "vector_probe", "build_info", "engine_version", "bench_read_bandwidth",
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
    if not isinstance(enabled, bool):
        raise errors.ArgumentTypeError(f"set_simd takes a bool, got {enabled!r:.40}")
    lib.ce_set_simd(1 if enabled else 0)


def get_simd():
    return bool(lib.ce_get_simd())


_Q4_PATHS = {"auto": lib.CE_Q4_AUTO, "normal": lib.CE_Q4_NORMAL, "subnormal": lib.CE_Q4_SUBNORMAL}


def set_q4_path(path):
    """Chooses how the Q4 GEMV unpacks nibbles: "normal" (converted to normal floats: fast on every
    CPU), "subnormal" (read in place as subnormal floats: a little faster where the CPU takes
    subnormal operands at full speed, like AMD Zen, 20x slower on Intel) or "auto" (the start-up
    probe's choice, the default). Both give bit-identical results. The env var TOOLKIT_Q4_PATH sets
    the value the process starts with."""
    if not isinstance(path, str):
        raise errors.ArgumentTypeError(f"q4 path must be a str, got {type(path).__name__}")
    if path not in _Q4_PATHS:
        raise errors.InvalidArgumentError(f"q4 path must be one of {', '.join(_Q4_PATHS)}, got {path!r}")
    check(lib.ce_set_q4_path(_Q4_PATHS[path]))


def get_q4_path():
    """The Q4 unpacking in use: "normal" or "subnormal" (see set_q4_path)."""
    return "normal" if lib.ce_get_q4_path() == lib.CE_Q4_NORMAL else "subnormal"


def q4_probe():
    """The start-up probe: {"setting": "auto"|"normal"|"subnormal", "path": the one in use,
    "subnormal_ns": ns per FMA with a subnormal operand, "normal_ns": with normal operands}."""
    setting = {v: k for k, v in _Q4_PATHS.items()}[lib.ce_get_q4_path_setting()]
    return {"setting": setting, "path": get_q4_path(), "subnormal_ns": lib.ce_q4_probe_ns(lib.CE_Q4_SUBNORMAL),
            "normal_ns": lib.ce_q4_probe_ns(lib.CE_Q4_NORMAL)}


def _q4_path_from_env():
    value = os.environ.get("TOOLKIT_Q4_PATH")
    if value is not None and value not in _Q4_PATHS:
        raise errors.InvalidArgumentError(
            f"TOOLKIT_Q4_PATH must be one of {', '.join(_Q4_PATHS)}, got {value!r}")


_q4_path_from_env()


def set_batch_invariant(enabled):
    """True (default): every matmul row's result has the same bits whatever the number of rows
    in the call and the row's position, so a sequence's logits do not depend on what shares its
    batch. False lets calls with 8 or more rows use a packed GEMM whose rounding differs (for
    speed comparisons; the models never need it)."""
    if not isinstance(enabled, bool):
        raise errors.ArgumentTypeError(f"batch invariance must be a bool, got {type(enabled).__name__}")
    lib.ce_set_batch_invariant(1 if enabled else 0)


def get_batch_invariant():
    return bool(lib.ce_get_batch_invariant())


def set_vector_bits(bits):
    """The vector width of the GEMV, packed-GEMM and attention kernels: 512 (AVX-512, where compiled
    in and supported by the CPU) or 256 (AVX2) for every kernel, or "auto" (the default): each
    kernel family at the width the engine's table gives it, the GEMV's F32/F16/BF16 tiles over
    several rows of x (prefill) at 512 wherever the 512-bit kernels can run (their register file
    gains 1.2-1.3x even on AMD Zen 4), the rest at the start-up probe's choice (512 only where
    512-bit FMAs give at least 1.3x the flops of 256-bit ones, as on Intel server cores; Zen 4
    issues them as two halves and stays at 256). vector_probe()["kernels"] says what each family
    runs at. Both widths give bit-identical results. The env var TOOLKIT_VECTOR_BITS=256|512|auto
    sets the value the process starts with. Raises InvalidArgumentError for other values or where
    512 is unavailable (vector_probe()["reason"])."""
    if bits == "auto":
        bits = lib.CE_VECTOR_AUTO
    elif isinstance(bits, bool) or not isinstance(bits, int):
        raise errors.ArgumentTypeError(f"vector bits must be 256, 512 or 'auto', got {type(bits).__name__}")
    elif bits == lib.CE_VECTOR_AUTO:
        raise errors.InvalidArgumentError("vector bits must be 256, 512 or 'auto', got 0")
    check(lib.ce_set_vector_bits(bits))


def get_vector_bits():
    """The width of the kernels that follow the probe (or the forced width): 256 or 512. Some
    kernel families run at another under "auto": see vector_probe()["kernels"]."""
    return lib.ce_get_vector_bits()


def vector_probe():
    """The start-up probe: {"setting": "auto"|256|512, "bits": the width of the kernels that follow
    the probe, "kernels": {family: 256|512} (gemv_float_decode, gemv_float_tiles, gemv_quant, gemm,
    attention: what each runs at now), "ns_256" and "ns_512": ns per FMA instruction of each width
    (0.0 where 512 is unavailable), "flops_ratio": 512-bit flops per second over 256-bit ones,
    "available": whether 512 can run, "reason": why not}."""
    setting = lib.ce_get_vector_bits_setting()
    ns256, ns512 = lib.ce_vector_probe_ns(256), lib.ce_vector_probe_ns(512)
    reason = ffi.string(lib.ce_vector_512_unavailable()).decode()
    kernels = {ffi.string(lib.ce_vector_kernel_name(k)).decode(): lib.ce_get_kernel_vector_bits(k)
               for k in range(lib.CE_VK_COUNT)}
    return {"setting": "auto" if setting == lib.CE_VECTOR_AUTO else setting, "bits": get_vector_bits(),
            "kernels": kernels, "ns_256": ns256, "ns_512": ns512,
            "flops_ratio": 2.0 * ns256 / ns512 if ns512 > 0 else 0.0, "available": not reason, "reason": reason}


def _vector_bits_from_env():
    value = os.environ.get("TOOLKIT_VECTOR_BITS")
    if value is not None and value not in ("256", "512", "auto"):
        raise errors.InvalidArgumentError(f"TOOLKIT_VECTOR_BITS must be one of 256, 512, auto, got {value!r}")


_vector_bits_from_env()


def build_info():
    return ffi.string(lib.ce_build_info()).decode()


def engine_version():
    return ffi.string(lib.ce_version()).decode()


def bench_read_bandwidth(nbytes=512 << 20, reps=2):
    """Best seconds for one streaming read of an nbytes buffer over all pool threads (a benchmark
    baseline: nbytes / seconds is the machine's read bandwidth)."""
    for name, v, lo in (("nbytes", nbytes, 4096), ("reps", reps, 1)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise errors.ArgumentTypeError(f"{name} must be an int, got {v!r:.40}")
        if not lo <= v < 1 << 62:
            raise errors.InvalidArgumentError(f"{name} must be at least {lo}, got {v}")
    s = lib.ce_bench_read_bandwidth(nbytes, reps)
    if s <= 0:
        raise errors.EngineError(ffi.string(lib.ce_last_error()).decode() or "bandwidth benchmark failed")
    return s
