"""Module, Linear, RMSNorm, Embedding, ModuleList: the building blocks model plugins compose.

Parameters are plain `Tensor`s registered by attribute assignment (as in PyTorch); loading weights
replaces them with tensors that borrow the weight file's memory, in whatever dtype the file stores.
"""
import mmap
from collections import OrderedDict

from toolkit import errors

from . import functional as F
from .tensor import Tensor

# The profiler (toolkit.core.engine.profile) sets this to an object with enter(module) and
# exit(module) to tag the time spent in each module; None (the default) costs one global read per
# module call.
_call_observer = None


class Module:
    """Base class: attribute-registered parameters and submodules; `m(x)` calls `m.forward(x)`.

    `hook_path` is the module's TransformerLens-style name in its model ("blocks.3.attn",
    "blocks.3.mlp", "blocks.3", "embed", "ln_final", "unembed"); "" until a model names it.
    """

    hook_path = ""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())

    def __setattr__(self, name, value):
        params = self.__dict__.get("_parameters")
        if params is None:
            raise errors.ToolkitError(f"call Module.__init__() in {type(self).__name__}.__init__ before assigning attributes")
        if isinstance(value, Tensor):
            self._modules.pop(name, None)
            params[name] = value
        elif isinstance(value, Module):
            params.pop(name, None)
            self._modules[name] = value
        elif value is None and name in params:
            params[name] = None
        else:
            params.pop(name, None)
            self._modules.pop(name, None)
        object.__setattr__(self, name, value)

    def __call__(self, *args, **kwargs):
        obs = _call_observer
        if obs is None:
            return self.forward(*args, **kwargs)
        obs.enter(self)
        try:
            return self.forward(*args, **kwargs)
        finally:
            obs.exit(self)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def children(self):
        return iter(self._modules.values())

    def named_modules(self, prefix=""):
        yield prefix, self
        for name, m in self._modules.items():
            yield from m.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_parameters(self, prefix=""):
        for name, m in self.named_modules(prefix):
            for pname, p in m._parameters.items():
                if p is not None:
                    yield (f"{name}.{pname}" if name else pname), p

    def parameters(self):
        for _, p in self.named_parameters():
            yield p

    def state_dict(self):
        return OrderedDict(self.named_parameters())

    def num_parameters(self):
        return sum(p.numel for p in self.parameters())

    def load_state_dict(self, state, strict=True):
        """Replaces parameters by name (shapes must match; dtypes may differ, e.g. Q4_1 weights).

        With strict=True every parameter must be given and no unknown name may appear.
        """
        own = dict(self.named_parameters())
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if strict and (missing or unexpected):
            raise errors.FormatError(
                f"state dict does not match {type(self).__name__}: missing {missing[:5]}"
                f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
        for name, value in state.items():
            if name not in own:
                continue
            if not isinstance(value, Tensor):
                raise errors.ArgumentTypeError(f"{name}: expected a Tensor, got {type(value).__name__}")
            if value.shape != own[name].shape:
                raise errors.ShapeError(f"{name}: expected shape {own[name].shape}, got {value.shape}")
            owner_path, _, attr = name.rpartition(".")
            owner = self
            for part in owner_path.split(".") if owner_path else []:
                owner = owner._modules[part]
            setattr(owner, attr, value)
        return missing, unexpected

    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, m in self._modules.items():
            sub = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({name}): {sub}")
        return "\n".join(lines) + (")" if len(lines) == 1 else "\n)")


def _param(shape, dtype="F32"):
    """A zero-filled parameter. Large ones live in an anonymous mapping, whose pages the kernel
    only commits when written: loading replaces every weight with the file's own memory, so the
    placeholders a model is built with never cost resident memory (the Tensor keeps the mapping)."""
    t = Tensor(shape, dtype) if _nbytes(shape, dtype) < _LAZY_BYTES else None
    if t is None:
        t = Tensor.wrap(mmap.mmap(-1, _nbytes(shape, dtype)), shape, dtype)
    return t


_LAZY_BYTES = 1 << 20


def _nbytes(shape, dtype):
    from . import dtypes

    rows = 1
    for d in shape[:-1]:
        rows *= d
    return rows * dtypes.row_bytes(dtypes.NAMES[dtypes.code(dtype)], shape[-1])


class Linear(Module):
    """y = x @ weight^T (+ bias); weight [out_features, in_features] in any weight dtype."""

    def __init__(self, in_features, out_features, bias=False, dtype="F32"):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = _param((out_features, in_features), dtype)
        self.bias = Tensor((out_features,)) if bias else None

    def forward(self, x, out=None):
        return F.matmul(x, self.weight, self.bias, out=out)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, dtype={self.weight.dtype}"


class RMSNorm(Module):
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = Tensor.from_list([1.0] * dim)

    def forward(self, x, out=None):
        return F.rms_norm(x, self.weight, self.eps, out=out)

    def extra_repr(self):
        return f"{self.dim}, eps={self.eps}"


class Embedding(Module):
    def __init__(self, num_embeddings, embedding_dim, dtype="F32"):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = _param((num_embeddings, embedding_dim), dtype)

    def forward(self, ids, out=None):
        return F.embedding(self.weight, ids, out=out)

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}, dtype={self.weight.dtype}"


class ModuleList(Module):
    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, module):
        if not isinstance(module, Module):
            raise errors.ArgumentTypeError(f"ModuleList holds Modules, got {type(module).__name__}")
        self._modules[str(len(self._modules))] = module
        return self

    def __getitem__(self, i):
        items = list(self._modules.values())
        return items[i]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())
