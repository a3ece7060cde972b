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
