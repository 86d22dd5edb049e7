"""Affinity read from the symbolic form of a run of pointwise ops: a layer scale and a norm
written by hand in ops no rule names as linear are still walked through, exactly."""
from __future__ import annotations

import warnings

import pytest
import sympy
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxdecomp
from conftest import bound, images, jitter_, rel_err
from fxdecomp.passes.symbolic import nonpolynomial


class HandWritten(nn.Module):
    """A residual MLP whose layer scale is a ``lerp`` from the stream toward stream + branch,
    then a constant channel mask written with ``where``, an affine map written as
    ``(x + c)**2 - x**2`` (= 2c·x + c²), and a final LayerNorm written with ``addcdiv``."""

    def __init__(self, d=8):
        super().__init__()
        self.embed = nn.Conv2d(3, d, 4, stride=4)
        self.fc1, self.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        self.gamma = nn.Parameter(torch.full((d,), 0.5))
        self.register_buffer("keep", torch.arange(d) % 3 != 0)
        self.c = nn.Parameter(torch.ones(d))
        self.beta = nn.Parameter(torch.zeros(d))
        self.eps = 1e-5

    def branch(self, x):
        return self.fc2(F.gelu(self.fc1(x)))

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.lerp(x, x + self.branch(x), self.gamma)
        x = torch.where(self.keep, x, -x)
        x = (x + self.c) ** 2 - x ** 2
        mu = x.mean(-1, keepdim=True)
        var = x.var(-1, keepdim=True, unbiased=False)
        x = torch.addcdiv(self.beta, x - mu, torch.sqrt(var + self.eps))
        return x.mean(1)


def hand_written(dtype=torch.float32):
    torch.manual_seed(0)
    return jitter_(HandWritten().eval(), scale=0.3).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_hand_written_scale_and_norm_are_walked_through_exactly(dtype):
    model = hand_written(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no collapse, no note
        dm = fxdecomp.decompose(model, "block", input_size=(3, 16, 16))
    x = images(dm, dtype=dtype)
    with torch.no_grad():
        out = dm(x)
        assert rel_err(out.total(), model(x)) <= bound(dtype)
    assert not dm.collapsed and not dm.linearised
    kinds = [c.kind for c in dm.components]
    assert kinds.count("embed") == 1 and kinds.count("mlp") == 1


def test_the_branch_component_is_its_output_through_the_frozen_hand_written_tail():
    """The MLP's component: its output less fc2's bias, scaled by gamma (the lerp's slope),
    signed by the mask, times 2c (the square's slope), centred on its own and divided by
    the actual standard deviation the hand-written norm computed; then pooled."""
    model = hand_written(torch.float64)
    dm = fxdecomp.decompose(model, "block", input_size=(3, 16, 16))
    x = images(dm, dtype=torch.float64)
    seen = {}
    hook = model.fc2.register_forward_hook(lambda m, a, o: seen.__setitem__("branch", o))
    try:
        with torch.no_grad():
            out = dm(x)
            model(x)
            stream = model.embed(x).flatten(2).transpose(1, 2)
            stream = torch.lerp(stream, stream + model.branch(stream), model.gamma)
            stream = torch.where(model.keep, stream, -stream)
            pre_norm = (stream + model.c) ** 2 - stream ** 2
    finally:
        hook.remove()
    sign = model.keep.double() * 2 - 1
    c = (seen["branch"] - model.fc2.bias) * model.gamma * sign * 2 * model.c
    std = torch.sqrt(pre_norm.var(-1, keepdim=True, unbiased=False) + model.eps)
    want = ((c - c.mean(-1, keepdim=True)) / std).mean(1)
    name = next(comp.name for comp in dm.components if comp.kind == "mlp")
    assert rel_err(out[name], want) <= 1e-10


class Stream(nn.Module):
    """One op ``op`` applied on the stream between two residual MLP blocks."""

    def __init__(self, op, d=8):
        super().__init__()
        self.op = op
        self.embed = nn.Conv2d(3, d, 4, stride=4)
        self.mlps = nn.ModuleList(nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d)) for _ in range(2))
        self.register_buffer("mask", torch.arange(d) % 2 == 0)
        self.w = nn.Parameter(torch.linspace(0.2, 0.8, d))

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = x + self.mlps[0](x)
        x = self.op(self, x)
        x = x + self.mlps[1](x)
        return x.mean(1)


OPS = {
    "where_const_mask": lambda m, x: torch.where(m.mask, x, 0.25 * x + m.w),
    "masked_fill": lambda m, x: x.masked_fill(m.mask, 0.5),
    "lerp_to_constant": lambda m, x: torch.lerp(x, m.w.expand_as(x), 0.3),
    "addcdiv_constants": lambda m, x: torch.addcdiv(x, m.w, m.w + 1.0, value=0.5) * 2,
    "square_difference": lambda m, x: (x - m.w) ** 2 - x * x,
}


@pytest.mark.parametrize("name", list(OPS))
def test_affine_pointwise_combinations_need_no_rule(name):
    torch.manual_seed(0)
    model = jitter_(Stream(OPS[name]).eval(), scale=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", fxdecomp.CollapseWarning)
        dm = fxdecomp.decompose(model, "block", input_size=(3, 16, 16))
    x = images(dm)
    with torch.no_grad():
        assert rel_err(dm(x).total(), model(x)) <= 1e-5
    assert [c.kind for c in dm.components].count("mlp") == 2


def test_a_pointwise_nonlinearity_on_the_stream_still_collapses():
    torch.manual_seed(0)
    model = jitter_(Stream(lambda m, x: torch.where(m.mask, x, x.abs())).eval(), scale=0.3)
    with pytest.warns(fxdecomp.CollapseWarning):
        dm = fxdecomp.decompose(model, "block", input_size=(3, 16, 16))
    assert dm.collapsed


def test_nonpolynomial_symbols():
    x, y, z = sympy.symbols("x y z")
    assert nonpolynomial(x * y + 3 * x ** 2) == set()
    assert nonpolynomial(x / sympy.sqrt(y) + sympy.exp(z)) == {y, z}
    assert nonpolynomial(1 / (x + y)) == {x, y}


def test_opaque_functions_with_arguments_of_their_own_are_not_read_symbolically():
    """Opaque functions are evaluated by name with torch's defaults, so a call that passes
    more (gelu's approximate, clamp's bounds) must stay with the op rules."""
    from fxdecomp.passes.symbolic import is_pointwise

    class Calls(nn.Module):
        def forward(self, x):
            return F.gelu(x) + F.gelu(x, approximate="tanh") + torch.clamp(x, -1, 1) + torch.relu(x)

    gm = torch.export.export(Calls(), (torch.randn(2, 3),)).module()
    names = {n.target.__name__.split(".")[0]: is_pointwise(n) for n in gm.graph.nodes
             if n.op == "call_function" and n.target is not torch.ops.aten.add.Tensor}
    calls = [n for n in gm.graph.nodes if n.op == "call_function" and "gelu" in str(n.target)]
    assert [is_pointwise(n) for n in calls] == [True, False]
    assert names["relu"] and not names["clamp"]
