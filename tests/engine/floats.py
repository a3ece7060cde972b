"""Float32 helpers shared by the engine tests' pure-Python references."""
import random
import struct


def f32(x):
    """x rounded to float32, as a Python float."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def rand_list(n, seed, lo=-2.0, hi=2.0):
    """n random float32 values in [lo, hi)."""
    r = random.Random(seed)
    return [f32(r.uniform(lo, hi)) for _ in range(n)]
