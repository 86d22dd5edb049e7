"""A rule is the one place an op is described: an op a user registers gets demand narrowing
(``Rule.reads``) and a symbolic form (``Rule.sympy``) as a built-in op does, and the functions
the pointwise kernels evaluate are exactly those the rules' forms name."""
from __future__ import annotations

import warnings

import pytest
import sympy
import torch
import torch.nn as nn

import fxdecomp
from conftest import bound, images, jitter_, rel_err
from fxdecomp import kernels
from fxdecomp.compiler import PASSES
from fxdecomp.core.context import RuleContext
from fxdecomp.core.state import CompileState, run_passes
from fxdecomp.rules import ALL, Rule, Step, SympyForm
from fxdecomp.rules.elementwise import UnaryNonlinear
from fxdecomp.rules.registry import _RULES


@torch.library.custom_op("fxdtest::twice_plus_one", mutates_args=())
def twice_plus_one(x: torch.Tensor) -> torch.Tensor:
    return 2 * x + 1


@twice_plus_one.register_fake
def _(x):
    return torch.empty_like(x)


OP = torch.ops.fxdtest.twice_plus_one.default


class ClassReadout(nn.Module):
    """Patch tokens and a class token, a residual MLP on every token, the user's op on the
    stream, and a class-token readout: the patches never reach the output."""

    def __init__(self, d=8):
        super().__init__()
        self.embed = nn.Conv2d(3, d, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, d))
        self.mlp = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, img):
        x = self.embed(img).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.mlp(x)
        return twice_plus_one(x)[:, 0]


class Elementwise(Rule):
    """The op keeps its input's axes; nothing else is said (no linearize)."""

    def axes(self, node, ctx):
        return ctx.raw_axes(node.args[0])


class Narrowing(Elementwise):
    def reads(self, node, arg, need, ctx):
        return need  # each output index reads the same index of its input


class Symbolic(Narrowing):
    def sympy(self, node):
        return SympyForm(("x",), lambda a: 2 * a["x"] + 1)


def _compile(rule, **kw):
    torch.manual_seed(0)
    model = jitter_(ClassReadout().eval(), scale=0.3)
    fxdecomp.register_rule(OP, rule)
    try:
        return model, fxdecomp.decompose(model, "block", input_size=(3, 16, 16), **kw)
    finally:
        fxdecomp.unregister_rule(OP)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_a_registered_op_with_a_symbolic_form_is_walked_through_exactly(dtype):
    """No linearize: the symbolic pass reads 2x + 1 from the form and makes it affine, so the
    op on the stream needs no rule of its own to be decomposed; its +1 is a bias component."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", fxdecomp.CollapseWarning)
        model, dm = _compile(Symbolic())
    model, dm = model.to(dtype), dm.to(dtype)
    x = images(dm, dtype=dtype)
    with torch.no_grad():
        out = dm(x)
        assert rel_err(out.total(), model(x)) <= bound(dtype)
        # the MLP's component is its output at the class token, doubled (the form's slope)
        seen = {}
        hook = model.mlp.register_forward_hook(lambda m, a, o: seen.__setitem__("mlp", o))
        model(x)
        hook.remove()
    name = next(c.name for c in dm.components if c.kind == "mlp")
    fc2_bias = model.mlp[3].bias
    torch.testing.assert_close(out[name], 2 * (seen["mlp"][:, 0] - fc2_bias), rtol=bound(dtype), atol=1e-6)
    biases = [c.name for c in dm.components if c.kind == "bias"]
    assert any("twice_plus_one" in b for b in biases), biases


def test_without_a_symbolic_form_the_op_collapses_the_stream():
    with pytest.warns(fxdecomp.CollapseWarning, match="twice_plus_one"):
        _, dm = _compile(Narrowing())
    assert dm.collapsed


def test_a_registered_ops_reads_narrow_the_demand():
    """The readout reads only the class token. With the rule's reads, the demand pass sees
    through the op that the patch tokens are never read: no embedding component. Without
    them it must assume the op reads every token, and the patches' terms are carried to the
    end only to be multiplied by zero (an embedding component that is 0)."""
    _, narrowed = _compile(Symbolic())
    assert "embed" not in {c.kind for c in narrowed.components}

    class Whole(Elementwise):
        def sympy(self, node):
            return SympyForm(("x",), lambda a: 2 * a["x"] + 1)

    _, whole = _compile(Whole())
    assert "embed" in {c.kind for c in whole.components}
    x = images(whole)
    with torch.no_grad():
        out = whole(x)
    kept = set(narrowed.components.names)
    assert kept < set(whole.components.names)
    for name in set(whole.components.names) - kept:  # the patches' embedding and its bias
        assert torch.equal(out[name], torch.zeros_like(out[name])), name


def _forms():
    """Every built-in pointwise rule's form, with the op it stands for."""
    for target, rule in _RULES.items():
        if isinstance(rule, UnaryNonlinear) and rule.form is not None and hasattr(target, "default"):
            yield target, rule.form


def test_the_kernels_evaluate_exactly_the_functions_the_forms_name_as_the_ops_compute_them():
    named = set()
    x = torch.linspace(-3, 3, 13, dtype=torch.float64) + 0.05
    for target, form in _forms():
        args = {k: sympy.Symbol(k) for k in form.operands}
        expr = form.build(args)
        for f in expr.atoms(sympy.Function):
            name = type(f).__name__
            named.add(name)
            assert name in kernels.POINTWISE_FUNCTIONS, (target, name)
        if form.defaults_only:  # an opaque function: the kernel evaluates the op itself
            (f,) = expr.atoms(sympy.Function)
            torch.testing.assert_close(kernels.POINTWISE_FUNCTIONS[type(f).__name__](x), target.default(x))
    assert named == set(kernels.POINTWISE_FUNCTIONS)
    assert {"elu", "leaky_relu", "exp", "gelu"} <= named and "clamp" not in named


def test_reads_of_built_in_ops():
    """select reads one row, slice its range, cat each input its own part; an elementwise op
    broadcasts the demand, a norm reads all of its normalised axes."""

    class Reads(nn.Module):
        def forward(self, x):
            y = torch.cat([x[:, :2], x * 2], dim=1)       # [B, 2 + 5, 4]
            return torch.layer_norm(y, (4,))[:, 3]

    x = torch.randn(2, 5, 4)
    state = CompileState(model=Reads().eval(), example=x, granularity="block", layers=None, linearize=False,
                         plan_batch=8, dtype=x.dtype, device=x.device, model_name="Reads")
    state = run_passes(state, PASSES[:4])  # up to the axes pass
    ctx = RuleContext(state)
    nodes = {n.name: n for n in state.gm.graph.nodes}
    rule = fxdecomp.rules.rule_for

    def reads(user, arg, need):
        node = nodes[user]
        return rule(node.target).reads(node, nodes[arg], need, ctx)

    assert reads("select", "slice_3", (ALL, ALL)) == (ALL, frozenset({3}), ALL)
    assert reads("layer_norm", "cat", (ALL, frozenset({3}), frozenset({1}))) == (ALL, frozenset({3}), ALL)
    need = (ALL, frozenset({1, 3}), ALL)  # rows 0-1 of cat are the slice's, rows 2-6 the product's
    assert reads("cat", "slice_2", need) == (ALL, frozenset({1}), ALL)
    assert reads("cat", "mul", need) == (ALL, frozenset({1}), ALL)
    assert reads("cat", "mul", (ALL, frozenset({0}), ALL)) is None
    assert reads("slice_2", "slice_1", (ALL, frozenset({1}), ALL)) == (ALL, frozenset({1}), ALL)
    assert reads("mul", "x", (ALL, frozenset({4}), ALL)) == (ALL, frozenset({4}), ALL)
    mul = nodes["mul"]
    assert Rule().reads(mul, mul.args[0], (ALL, frozenset({4}), ALL), ctx) == (ALL, ALL, ALL)
    assert Rule().step is Step.NONLINEAR
