"""Module, Linear, RMSNorm, Embedding, ModuleList: registration, state dicts, forward, bad input."""
import math

import pytest

from toolkit import errors
from toolkit.core.engine.backend import Embedding, Linear, Module, ModuleList, RMSNorm, Tensor


class Block(Module):
    def __init__(self):
        super().__init__()
        self.norm = RMSNorm(4, eps=1e-6)
        self.proj = Linear(4, 3)
        self.layers = ModuleList([Linear(3, 3), Linear(3, 2)])

    def forward(self, x):
        h = self.proj(self.norm(x))
        for layer in self.layers:
            h = layer(h)
        return h


def test_parameters_and_modules_are_registered_by_name():
    b = Block()
    names = [n for n, _ in b.named_parameters()]
    assert names == ["norm.weight", "proj.weight", "layers.0.weight", "layers.1.weight"]
    assert [n for n, _ in b.named_modules()] == ["", "norm", "proj", "layers", "layers.0", "layers.1"]
    assert b.num_parameters() == 4 + 12 + 9 + 6
    assert len(b.layers) == 2 and isinstance(b.layers[1], Linear)
    assert "Linear(in_features=4, out_features=3" in repr(b)


def test_linear_matches_a_python_reference():
    lin = Linear(3, 2)
    w = [[1.0, 2.0, 3.0], [-1.0, 0.5, 0.25]]
    lin.load_state_dict({"weight": Tensor.from_list(w)})
    x = [[1.0, 1.0, 1.0], [2.0, -1.0, 4.0]]
    y = lin(Tensor.from_list(x)).tolist()
    for r in range(2):
        for c in range(2):
            assert y[r][c] == pytest.approx(sum(a * b for a, b in zip(x[r], w[c])))


def test_linear_with_bias_and_quantised_weight():
    lin = Linear(32, 2, bias=True)
    w = [[(i % 7) / 7.0 for i in range(32)], [-(i % 5) / 5.0 for i in range(32)]]
    lin.load_state_dict({"weight": Tensor.from_list(w).to("Q8_0"), "bias": Tensor.from_list([1.0, -2.0])})
    y = lin(Tensor.from_list([[1.0] * 32])).to_list()
    assert y[0] == pytest.approx(sum(w[0]) + 1.0, abs=0.05)
    assert y[1] == pytest.approx(sum(w[1]) - 2.0, abs=0.05)


def test_rmsnorm_and_embedding_forward():
    norm = RMSNorm(3, eps=0.0)
    y = norm(Tensor.from_list([[3.0, 4.0, 0.0]])).to_list()
    rms = math.sqrt(25 / 3)
    assert y == pytest.approx([3 / rms, 4 / rms, 0.0])
    emb = Embedding(4, 2)
    emb.load_state_dict({"weight": Tensor.from_list([[0, 0], [1, 1], [2, 2], [3, 3]])})
    assert emb([3, 1]).tolist() == [[3.0, 3.0], [1.0, 1.0]]
    with pytest.raises(errors.IndexOutOfRangeError):
        emb([4])


def test_load_state_dict_checks_names_shapes_and_types():
    b = Block()
    with pytest.raises(errors.FormatError):
        b.load_state_dict({"norm.weight": Tensor((4,))})  # the others are missing
    full = {n: Tensor(p.shape) for n, p in b.named_parameters()}
    with pytest.raises(errors.FormatError):
        b.load_state_dict(dict(full, extra=Tensor((1,))))
    with pytest.raises(errors.ShapeError):
        b.load_state_dict(dict(full, **{"proj.weight": Tensor((4, 3))}))
    with pytest.raises(errors.ArgumentTypeError):
        b.load_state_dict(dict(full, **{"proj.weight": [[0.0] * 4] * 3}))
    missing, unexpected = b.load_state_dict({"norm.weight": Tensor((4,))}, strict=False)
    assert "proj.weight" in missing and unexpected == []


def test_forward_with_wrong_shapes_raises_typed_errors():
    lin = Linear(4, 3)
    with pytest.raises(errors.ShapeError):
        lin(Tensor((2, 5)))
    with pytest.raises(errors.ArgumentTypeError):
        lin([[1.0, 2.0, 3.0, 4.0]])
    with pytest.raises(errors.ShapeError):
        RMSNorm(4)(Tensor((1, 3)))
    with pytest.raises(errors.ArgumentTypeError):
        ModuleList([1])


def test_module_without_forward_and_without_init():
    class NoForward(Module):
        pass

    with pytest.raises(NotImplementedError):
        NoForward()(1)

    class NoInit(Module):
        def __init__(self):
            self.w = Tensor((1,))

    with pytest.raises(errors.ToolkitError):
        NoInit()
