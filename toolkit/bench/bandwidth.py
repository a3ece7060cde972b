"""The machine's read bandwidth, measured once per CPU model and thread count and cached, for the
speed guards that need a ceiling to compare against (`python -m toolkit generate`'s summary).

A 256 MiB stream (8x a large L3) over the engine's threads takes ~0.1 s; the figure is kept in
<cache dir>/bandwidth.json so later runs pay nothing. It is a yardstick for "far too slow" warnings,
not a benchmark: `python -m toolkit.bench kernels` measures properly."""
import json
import os

from toolkit.common.hub import cache_dir
from toolkit.common.machine import cpu_name
from toolkit.core.engine import backend as B

NBYTES = 256 << 20


def read_bandwidth(cache=True):
    """Read bandwidth in bytes/s with the engine's current thread count (cached per CPU model)."""
    key = f"{cpu_name()} | {B.get_threads()} threads"
    path = cache_dir() / "bandwidth.json"
    table = {}
    if cache:
        try:
            table = json.loads(path.read_text())
            if isinstance(table.get(key), (int, float)) and table[key] > 0:
                return float(table[key])
        except (OSError, ValueError, AttributeError):
            table = {}  # missing or unreadable: measure and rewrite it
    bw = NBYTES / B.bench_read_bandwidth(NBYTES, 2)
    if cache:
        table = table if isinstance(table, dict) else {}
        table[key] = bw
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(table, indent=1))
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only cache only costs the measurement next time
    return bw


def decode_bytes_per_token(model):
    """Weight bytes a decode step reads: every parameter, less an untied embedding table (only
    one row of it is read per token)."""
    total = sum(p.nbytes for p in model.parameters())
    if not model.config.tie_word_embeddings:
        total -= model.embed_tokens.weight.nbytes
    return total
