"""Stand-ins for the interp layer's API, for notebook tests (the real one lands separately)."""


def magics_of(ip):
    return ip.magics_manager.registry["ToolkitMagics"]


class FakePattern:
    """What cache["blocks.L.attn.hook_pattern"] is: [head, q, k], with .shape and .tolist()."""

    def __init__(self, heads, n, layer):
        self.shape = (heads, n, n)
        self.dtype, self.nbytes = "F32", 4 * heads * n * n
        self.rows = [[[(1.0 / (q + 1) if k <= q else 0.0) if h != layer % heads else float(k == q)
                       for k in range(n)] for q in range(n)] for h in range(heads)]

    def tolist(self):
        return self.rows


class FakeCache(dict):
    nbytes = 0


class InterpModel:
    """The real model plus a `run_with_cache` that returns causal-average patterns (head L%H: the
    diagonal) and counts its calls: stands in for the interp layer where it has not landed."""

    def __init__(self, model):
        self._m = model
        self.runs = 0

    def __getattr__(self, name):
        return getattr(self._m, name)

    def run_with_cache(self, prompt_or_ids, names_filter=None):
        self.runs += 1
        ids = prompt_or_ids if isinstance(prompt_or_ids, list) else self._m.tokenizer.encode(prompt_or_ids)
        layer = int(names_filter.split(".")[1])
        return None, FakeCache({names_filter: FakePattern(self._m.config.num_attention_heads, len(ids), layer)})


class FakeProfile:
    """The profiler's result API (by_op, by_layer, table) with fixed numbers."""

    def __init__(self, layers=3):
        self.layers = layers

    def by_op(self):
        return {"matmul": dict(calls=90, seconds=0.030, share=0.75, gb_per_s=20.0, gflop_per_s=5.0),
                "attention": dict(calls=30, seconds=0.010, share=0.25, gb_per_s=4.0, gflop_per_s=1.0)}

    def by_layer(self):
        out = {}
        for i in range(self.layers):
            out[f"blocks.{i}"] = dict(calls=2, seconds=0.004 + 0.001 * i, op_seconds=0.003)
            out[f"blocks.{i}.attn"] = dict(calls=2, seconds=0.001, op_seconds=0.001)
            out[f"blocks.{i}.mlp"] = dict(calls=2, seconds=0.002, op_seconds=0.002)
        out["(outside modules)"] = dict(calls=0, seconds=None, op_seconds=0.0005)
        return out

    def table(self, layers=True):
        return "profile: 40.00 ms wall, 40.00 ms in engine ops (100%), 0.00 ms Python, 2 threads"


class ProfiledModel:
    """The real model plus a `profile()` context manager yielding a FakeProfile."""

    def __init__(self, model):
        self._m = model
        self.profiled = 0

    def __getattr__(self, name):
        return getattr(self._m, name)

    def profile(self):
        import contextlib

        @contextlib.contextmanager
        def run():
            self.profiled += 1
            yield FakeProfile()
        return run()
