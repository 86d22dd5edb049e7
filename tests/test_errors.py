"""Bad input gets an error that names the problem and the fix."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import fxdecomp
from conftest import images, rel_err, small_vit


@torch.library.custom_op("fxdtest::sharpen", mutates_args=())
def sharpen(x: torch.Tensor) -> torch.Tensor:
    return x * x.abs()


@sharpen.register_fake
def _(x):
    return torch.empty_like(x)


class StreamWithCustomOp(nn.Module):
    """A residual model whose stream passes through an op no rule covers."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 4, stride=4)
        self.mix = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 8))
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = x + self.mix(x)
        x = sharpen(x)
        return self.head(x.mean(1))


def test_unknown_op_on_stream_names_node_module_and_fix():
    model = StreamWithCustomOp().eval()
    with pytest.raises(fxdecomp.UnsupportedOpError) as info:
        fxdecomp.decompose(model, input_size=(3, 16, 16))
    msg = str(info.value)
    assert "fxdtest.sharpen" in msg and "residual stream" in msg
    assert "register_rule(torch.ops.fxdtest.sharpen.default, kind='nonlinear')" in msg


def test_registered_rule_is_used_and_collapse_is_reported():
    model = StreamWithCustomOp().eval()
    op = torch.ops.fxdtest.sharpen.default
    fxdecomp.register_rule(op, kind="nonlinear")
    try:
        with pytest.warns(fxdecomp.CollapseWarning, match="sharpen"):
            dm = fxdecomp.decompose(model, input_size=(3, 16, 16))
    finally:
        fxdecomp.unregister_rule(op)
    x = images(dm)
    with torch.no_grad():
        out = dm(x)
        assert rel_err(out.total(), model(x)) < 1e-5
    kinds = [c.kind for c in dm.components]
    assert kinds.count("collapsed") == 1 and "embed" not in kinds and "mlp" not in kinds
    assert dm.collapsed and dm.notes and "collapsed" in dm.notes[0] and "linearize=True" in dm.notes[0]


def test_register_rule_rejects_unknown_kind():
    with pytest.raises(ValueError, match="kind"):
        fxdecomp.register_rule(torch.ops.aten.cumsum.default, kind="linearish")


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(12, 4)
        self.b = nn.Linear(12, 4)

    def forward(self, x):
        x = x.flatten(1)[:, :12]
        if x.sum() > 0:  # Python control flow on a tensor value
            return self.a(x)
        return self.b(x)


def test_untraceable_model():
    with pytest.raises(fxdecomp.TraceError, match="could not trace DataDependent") as info:
        fxdecomp.decompose(DataDependent().eval(), input_size=(3, 2, 2))
    assert "Fix:" in str(info.value)


def test_training_mode_is_refused():
    with pytest.raises(fxdecomp.TraceError, match=r"model.eval\(\)"):
        fxdecomp.decompose(small_vit().train())


class TwoOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(12, 4)

    def forward(self, x):
        y = self.lin(x.flatten(1)[:, :12])
        return y, y * 2


def test_several_outputs_need_a_choice():
    with pytest.raises(fxdecomp.InputError, match="returns 2 values; choose the tensor to decompose with output=INDEX"):
        fxdecomp.decompose(TwoOutputs().eval(), input_size=(3, 2, 2))


def test_input_size_must_be_known():
    with pytest.raises(fxdecomp.InputError, match="input_size"):
        fxdecomp.decompose(TwoOutputs().eval())


def test_wrong_images(tiny_vit):
    dm = fxdecomp.decompose(tiny_vit, "head")
    with pytest.raises(fxdecomp.InputError, match=r"compiled for images of shape \[B, 3, 32, 32\]") as info:
        dm(torch.randn(2, 3, 48, 48))
    assert "input_size=(3, 48, 48)" in str(info.value)
    with pytest.raises(fxdecomp.InputError, match="compiled for torch.float32"):
        dm(torch.randn(2, 3, 32, 32, dtype=torch.float64))
    with pytest.raises(fxdecomp.InputError, match="tensor of images"):
        dm([torch.randn(3, 32, 32)])
    with pytest.raises(fxdecomp.InputError, match=r"shape \[B, 3, 32, 32\]"):
        dm(torch.randn(3, 32, 32))


def test_bad_arguments(tiny_vit):
    with pytest.raises(fxdecomp.InputError, match="granularity"):
        fxdecomp.decompose(tiny_vit, "neuron")
    with pytest.raises(fxdecomp.InputError, match=r"no layer\(s\) \[7\]"):
        fxdecomp.decompose(tiny_vit, "token", layers=[7])


def test_unknown_component(tiny_vit):
    dm = fxdecomp.decompose(tiny_vit, "head")
    out = dm(images(dm))
    with pytest.raises(fxdecomp.UnknownComponentError, match="blocks.1.attn\\[h0\\]"):
        out["blocks.1.atn[h0]"]
    with pytest.raises(KeyError):  # UnknownComponentError is a KeyError too
        dm.components.index("nope")
    with pytest.raises(fxdecomp.UnknownComponentError, match="out of range"):
        out[len(out)]
    with pytest.raises(fxdecomp.UnknownComponentError, match="grouping"):
        out.group("neuron")
    with pytest.raises(fxdecomp.UnknownComponentError, match="no field"):
        out.select(depth=3)
