"""What CPU this is: its model name (reported with every speed figure) and the SIMD flags that
select the engine's kernels. Reads /proc/cpuinfo; nothing here measures or imports the engine."""
import platform

# the flags that decide which kernels a build can run (x86, then Arm)
CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq",
             "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8",
             "asimd", "sve", "neon")


def cpu_info():
    """{"machine", "model_name", "flags"}: the CPU's model name and which of CPU_FLAGS it has (None
    for fields it cannot read)."""
    info = {"machine": platform.machine(), "model_name": None, "flags": None}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return info  # not Linux: the engine's build info still names the kernels
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and info["model_name"] is None:
            info["model_name"] = value.strip()
        elif key in ("flags", "Features") and info["flags"] is None:
            have = set(value.split())
            info["flags"] = [f for f in CPU_FLAGS if f in have]
    return info


def cpu_name():
    """The CPU's model name as lscpu shows it ("AMD EPYC", ...), or the best the platform knows."""
    return cpu_info()["model_name"] or platform.processor() or platform.machine() or "unknown CPU"
