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
        fxdecomp.decompose(tiny_vit, "pixel")
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


def test_built_in_errors_become_errors_naming_the_fix(tiny_vit):
    with pytest.raises(fxdecomp.InputError, match=r"takes a torch.nn.Module.*models_registry.load\('world-vit'\)"):
        fxdecomp.decompose("world-vit")
    for layers in ([1.5], [True], "1", [1, "x"]):  # 1.5 and True were taken as layer 1
        with pytest.raises(fxdecomp.InputError, match="layers must be"):
            fxdecomp.decompose(tiny_vit, "head", layers=layers)
    with pytest.raises(fxdecomp.InputError, match="no effect at block granularity"):
        fxdecomp.decompose(tiny_vit, "block", layers=[1])
    import numpy as np

    dm = fxdecomp.decompose(tiny_vit, "head", layers=[np.int64(1)])
    assert dm.layers == {1}
    with torch.no_grad():
        out = dm(images(dm))
    for bad in (1.5, True, None, [0.5], b"x"):
        with pytest.raises(fxdecomp.UnknownComponentError, match="cannot select components"):
            out[bad]
    assert torch.equal(out[np.int64(2)], out[2]) and out[2].shape == out.output.shape
    empty = out.select(kind="conv")  # a ViT has none: an empty selection, whose summaries are empty
    assert len(empty) == 0 and empty.top() == [] and empty.table().count("\n") == 1
    assert empty.norms().shape == (3, 0)
    with torch.no_grad():
        none = dm(images(dm, batch=0))
    with pytest.raises(fxdecomp.InputError, match="no images"):
        none.error()
    from fxdecomp.align import ImageBatches

    with pytest.raises(fxdecomp.InputError, match="batch_size must be a whole number"):
        ImageBatches(dm, torch.zeros(4, 3, 32, 32), preprocess=lambda x: x, clip=None, batch_size=0)


def test_the_fix_a_shape_error_suggests_works(tiny_vit):
    """The suggested call, applied to the images, is accepted (a wrong-channel batch used to be told to compile
    for input_size=(1, 32, 32), which cannot trace)."""
    from fxdecomp.models_registry import transform_for

    dm = fxdecomp.decompose(tiny_vit, "head")
    g = torch.Generator().manual_seed(0)
    grey = torch.rand(2, 1, 32, 32, generator=g)
    rgba = torch.rand(2, 4, 32, 32, generator=g)
    one = torch.rand(3, 32, 32, generator=g)
    raw = (torch.rand(2, 3, 40, 50, generator=g) * 255).to(torch.uint8)
    fixes = {"images.expand(-1, 3, -1, -1)": (grey, lambda x: x.expand(-1, 3, -1, -1)),
             "images[:, :3]": (rgba, lambda x: x[:, :3]),
             "images.unsqueeze(0)": (one, lambda x: x.unsqueeze(0)),
             "transform_for(model)(images)": (raw, transform_for(tiny_vit))}
    with torch.no_grad():
        for suggestion, (x, fix) in fixes.items():
            with pytest.raises(fxdecomp.InputError) as info:
                dm(x)
            assert suggestion in str(info.value) and "input_size=(1" not in str(info.value)
            assert dm(fix(x)).contributions.shape[0] == fix(x).shape[0]
        with pytest.raises(fxdecomp.InputError, match=r"transform_for\(model\)\(images\)\.to\(torch.float32\)"):
            dm(raw[:, :, :32, :32].contiguous())
        assert dm(transform_for(tiny_vit)(raw).to(torch.float32)).error() < 1e-5
