"""Elementwise ops: copies and casts, sums and differences, products, and the
pointwise nonlinearities (which are never linearised here). Ops such as ``lerp``,
``addcdiv`` or ``where`` are listed as nonlinear for their axes only: where a run of
them is affine in what it reads, the affinity pass finds so from their symbolic forms
(``Rule.sympy``, read by ``passes/symbolic.py``). Every elementwise op reads, of each
input, the indices it writes (``Rule.reads``), so the demand pass narrows through it."""
from __future__ import annotations

import numbers
import operator

import sympy
import torch
import torch.fx as fx
import torch.nn.functional as F

from ..core.atoms import axis_size
from ..core.step import Step
from ..core.terms import Linearization, Piece
from .base import Rule, SympyForm, UnaryRule, bound_args, broadcast_axes, broadcast_reads
from .movement import regroup_factor
from .registry import add_rule, rules_for

aten = torch.ops.aten


def _is_scalar(x) -> bool:
    return isinstance(x, numbers.Number) and not isinstance(x, bool)


def _piece(node: fx.Node, x, ctx, coef: float = 1.0) -> Piece:
    """``x`` broadcast into ``node``'s shape, as a piece (varying input or constant)."""
    if isinstance(x, fx.Node):
        atoms = frozenset(ctx.atoms(x))
        factors = []
        if not atoms <= set(ctx.atoms(node)):
            factors, atoms = _realign(node, x, ctx)
        if ctx.varying(x):
            return Piece(arg=x, factors=factors, passthrough=atoms, coef=coef)
        return Piece(const=ctx.const_factor(x), factors=factors, passthrough=atoms, coef=coef,
                     label=ctx.param_name(x))
    if _is_scalar(x):
        return Piece(const=ctx.scalar(float(x)), coef=coef)
    raise ctx.unsupported(node, f"unexpected operand {x!r}")


def _realign(node: fx.Node, x: fx.Node, ctx):
    """Operand axes that hold the output's elements under a different split into atoms
    (one path partitioned a grid into windows, the other into strided grids): a 0/1
    regrouping factor per such axis. Returns (factors, atoms passed through)."""
    x_axes, out_axes = ctx.axes(x), ctx.axes(node)
    off = len(out_axes) - len(x_axes)
    out_atoms = set(ctx.atoms(node))
    factors, keep = [], set()
    for i, axis in enumerate(x_axes):
        axis = tuple(ctx.resolve(axis))
        if set(axis) <= out_atoms:
            keep |= set(axis)
            continue
        target = tuple(ctx.resolve(out_axes[off + i])) if off + i >= 0 else ()
        if axis_size(target) != axis_size(axis):
            raise ctx.unsupported(node, "its operands' axes could not be matched to its output's")
        factors.append(regroup_factor(ctx, node, target, axis))
    return factors, frozenset(keep)


class _Elementwise(Rule):
    """Reads, of each input, the indices it writes (broadcast inputs: all of a broadcast axis)."""

    def reads(self, node, arg, need, ctx):
        return broadcast_reads(ctx.shape(arg), ctx.shape(node), need)


def _alpha(a):
    return a.get("alpha", 1) if a.get("alpha") is not None else 1


def _same(a):
    return a["input"]


#: symbolic forms by op (packets, or Python operators), for the rules below that cover several
_FORMS = {
    aten.add: SympyForm(("input", "other", "alpha"), lambda a: a["input"] + _alpha(a) * a["other"]),
    aten.sub: SympyForm(("input", "other", "alpha"), lambda a: a["input"] - _alpha(a) * a["other"]),
    aten.rsub: SympyForm(("input", "other", "alpha"), lambda a: a["other"] - _alpha(a) * a["input"]),
    operator.add: SympyForm(("input", "other"), lambda a: a["input"] + a["other"]),
    operator.sub: SympyForm(("input", "other"), lambda a: a["input"] - a["other"]),
    aten.mul: SympyForm(("input", "other"), lambda a: a["input"] * a["other"]),
    operator.mul: SympyForm(("input", "other"), lambda a: a["input"] * a["other"]),
    aten.div: SympyForm(("input", "other"),
                        lambda a: a["input"] / a["other"] if a.get("rounding_mode") is None else None),
    operator.truediv: SympyForm(("input", "other"), lambda a: a["input"] / a["other"]),
    **{op: SympyForm(("input",), _same) for op in (aten.clone, aten.contiguous, aten.alias, aten.detach)},
}


def _form_of(node):
    return _FORMS.get(getattr(node.target, "overloadpacket", node.target))


@rules_for(aten.clone, aten.contiguous, aten.alias, aten.detach, aten.lift_fresh_copy,
           aten._to_copy, aten.to, aten.type_as, aten.dropout, aten.feature_dropout,
           aten.alpha_dropout)
class IdentityRule(_Elementwise, UnaryRule):
    """Returns its first argument's values (possibly copied, cast or moved)."""

    step = Step.LINEAR

    def axes(self, node, ctx):
        return ctx.raw_axes(node.args[0])

    def sympy(self, node):
        return _form_of(node)  # copies only: a cast may change what the values are

    def linearize(self, node, ctx, carried=None):
        x = node.args[0]
        if node.target in (aten.dropout.default,) and bound_args(node)["train"]:
            raise ctx.unsupported(node, "dropout is active (call model.eval() first)")
        return Linearization([_piece(node, x, ctx)])


@rules_for(aten.add.Tensor, aten.add.Scalar, aten.sub.Tensor, aten.sub.Scalar, aten.rsub.Tensor,
           aten.rsub.Scalar, operator.add, operator.sub)
class AddRule(_Elementwise):
    """``x + alpha*y`` (and ``x - alpha*y``): every operand is a summand."""

    step = Step.LINEAR

    def axes(self, node, ctx):
        return broadcast_axes(node, node.args[:2], ctx)

    def sympy(self, node):
        return _form_of(node)

    def linearize(self, node, ctx, carried=None):
        x, y = node.args[0], node.args[1]
        alpha = bound_args(node).get("alpha", 1)  # a Python operator has none
        name = getattr(node.target, "__name__", str(node.target))
        sign = -1.0 if ("sub" in name) else 1.0
        if "rsub" in name:  # y - alpha * x
            return Linearization([_piece(node, y, ctx), _piece(node, x, ctx, -float(alpha))])
        return Linearization([_piece(node, x, ctx), _piece(node, y, ctx, sign * float(alpha))])


@rules_for(aten.neg)
class NegRule(_Elementwise):
    step = Step.LINEAR

    def axes(self, node, ctx):
        return ctx.raw_axes(node.args[0])

    def sympy(self, node):
        return _NEG

    def linearize(self, node, ctx, carried=None):
        return Linearization([_piece(node, node.args[0], ctx, -1.0)])


@rules_for(aten.mul.Tensor, aten.mul.Scalar, operator.mul)
class MulRule(_Elementwise):
    """``x * y``: linear in either operand with the other frozen (gates, scales)."""

    step = Step.MIXING

    def axes(self, node, ctx):
        return broadcast_axes(node, node.args[:2], ctx)

    def sympy(self, node):
        return _form_of(node)

    def linearize(self, node, ctx, carried=None):
        x, y = node.args[0], node.args[1]
        if _is_scalar(y) or _is_scalar(x):
            t, s = (x, y) if _is_scalar(y) else (y, x)
            return Linearization([_piece(node, t, ctx, float(s))])
        carried = carried if (ctx.varying(x) and ctx.varying(y)) else (x if ctx.varying(x) else y)
        other = y if carried is x else x
        p = _piece(node, carried, ctx)
        p.factors = [ctx.const_factor(other)]
        return Linearization([p])


@rules_for(aten.div.Tensor, aten.div.Scalar, operator.truediv)
class DivRule(_Elementwise):
    """``x / y``: linear in ``x``; ``y`` frozen (its reciprocal becomes a factor)."""

    step = Step.MIXING

    def axes(self, node, ctx):
        return broadcast_axes(node, node.args[:2], ctx)

    def sympy(self, node):
        return _form_of(node)

    def carriable(self, node):
        return [node.args[0]] if isinstance(node.args[0], fx.Node) else []

    def linearize(self, node, ctx, carried=None):
        x, y = node.args[0], node.args[1]
        if bound_args(node).get("rounding_mode") is not None:
            raise ctx.unsupported(node, "rounded division is not linear")
        if _is_scalar(y):
            return Linearization([_piece(node, x, ctx, 1.0 / float(y))])
        p = _piece(node, x, ctx)
        p.factors = [ctx.derived_factor(torch.reciprocal, y, name=f"inv_{y.name}")]
        return Linearization([p])


class UnaryNonlinear(_Elementwise):
    """Pointwise nonlinearity: output has the atoms of its (broadcast) inputs. ``form``: its
    symbolic form, if it has one."""

    step = Step.NONLINEAR

    def __init__(self, form: SympyForm | None = None):
        self.form = form

    def sympy(self, node):
        return self.form if self.form is not None and self.form.holds(node) else None

    def axes(self, node, ctx):
        args = [a for a in node.all_input_nodes if ctx.shape(a) is not None]
        shape = ctx.shape(node)
        if shape is None:  # a tuple (or no tensor): nothing to follow
            return ctx.fresh(node)
        if args and all(_broadcasts(ctx.shape(a), shape) for a in args):
            return broadcast_axes(node, args, ctx)
        return ctx.fresh(node)  # not elementwise after all (a registered op that reshapes)


def _broadcasts(shape: tuple, out: tuple) -> bool:
    """Whether a tensor of ``shape`` broadcasts to ``out``."""
    if len(shape) > len(out):
        return False
    return all(s == 1 or s == o for s, o in zip(shape[::-1], out[::-1]))


_POINTWISE = [
    "gelu", "relu", "relu6", "silu", "sigmoid", "tanh", "exp", "log", "sqrt", "rsqrt", "erf",
    "abs", "hardswish", "hardsigmoid", "hardtanh", "leaky_relu", "elu", "mish", "softplus",
    "sin", "cos", "pow", "clamp", "clamp_min", "clamp_max", "sign", "reciprocal", "softmax",
    "_softmax", "log_softmax", "_log_softmax", "where", "masked_fill", "square", "exp2", "log1p",
    "expm1", "sgn", "logical_not", "eq", "ne", "lt", "le", "gt", "ge", "floor", "ceil", "round",
    "maximum", "minimum", "gelu_", "relu_", "silu_", "quick_gelu", "selu", "celu",
    "threshold", "logit", "tan", "atan", "bitwise_not", "isnan", "nan_to_num", "fill",
    "zeros_like", "ones_like", "full_like", "empty_like", "lerp", "addcdiv",
]


def _where(c, x, y):
    return c * x + (1 - c) * y


def _value(a):
    return a["value"] if a.get("value") is not None else sympy.Integer(1)


def _opaque(name: str, fn) -> SympyForm:
    """A pointwise function sympy keeps opaque (an expression holding one of a variable is not
    affine in it), evaluated by ``fn`` with torch's defaults: so only for calls that pass no
    other argument (gelu's approximate, leaky_relu's slope)."""
    f = sympy.Function(name)
    return SympyForm(("input",), lambda a: f(a["input"]), functions={name: fn}, defaults_only=True)


_NEG = SympyForm(("input",), lambda a: -a["input"])
_EXP = {"exp": torch.exp}
#: symbolic forms of the pointwise nonlinearities that have one (by name in ``_POINTWISE``)
_NONLINEAR_FORMS = {
    "lerp": SympyForm(("input", "end", "weight"), lambda a: a["input"] + a["weight"] * (a["end"] - a["input"])),
    "addcdiv": SympyForm(("input", "tensor1", "tensor2", "value"),
                         lambda a: a["input"] + _value(a) * a["tensor1"] / a["tensor2"]),
    "where": SympyForm(("condition", "input", "other"), lambda a: _where(a["condition"], a["input"], a["other"])),
    "masked_fill": SympyForm(("input", "mask", "value"), lambda a: _where(a["mask"], a["value"], a["input"])),
    "pow": SympyForm(("input", "exponent"), lambda a: a["input"] ** a["exponent"]),
    "square": SympyForm(("input",), lambda a: a["input"] ** 2),
    "reciprocal": SympyForm(("input",), lambda a: 1 / a["input"]),
    "sqrt": SympyForm(("input",), lambda a: sympy.sqrt(a["input"])),
    "rsqrt": SympyForm(("input",), lambda a: 1 / sympy.sqrt(a["input"])),
    "exp": SympyForm(("input",), lambda a: sympy.exp(a["input"]), functions=_EXP),
    "log": SympyForm(("input",), lambda a: sympy.log(a["input"]), functions={"log": torch.log}),
    "tanh": SympyForm(("input",), lambda a: sympy.tanh(a["input"]), functions={"tanh": torch.tanh}),
    "sigmoid": SympyForm(("input",), lambda a: 1 / (1 + sympy.exp(-a["input"])), functions=_EXP),
    **{name: _opaque(name, fn) for name, fn in {
        "relu": torch.relu, "gelu": F.gelu, "silu": F.silu, "hardswish": F.hardswish,
        "hardsigmoid": F.hardsigmoid, "abs": torch.abs, "sin": torch.sin, "cos": torch.cos, "erf": torch.erf,
        "softplus": F.softplus, "mish": F.mish, "leaky_relu": F.leaky_relu, "elu": F.elu, "sign": torch.sign,
    }.items()},
}
for _name in _POINTWISE:
    _packet = getattr(aten, _name, None)
    if _packet is not None:
        add_rule(UnaryNonlinear(_NONLINEAR_FORMS.get(_name)), _packet)
rules_for(torch.sigmoid, torch.tanh)(UnaryNonlinear)


@rules_for(aten.addcmul)
class AddcmulRule(Rule):
    """``x + value * t1 * t2`` (an affine layer written as one op): linear in ``x`` and in
    whichever product operand varies; with both varying, linear in the carried one."""

    step = Step.MIXING

    def axes(self, node, ctx):
        return broadcast_axes(node, node.args[:3], ctx)

    def carriable(self, node):
        return [a for a in node.args[1:3] if isinstance(a, fx.Node)]

    def classify(self, node, varying):
        if sum(bool(varying(a)) for a in node.args[1:3]) > 1:
            return Step.MIXING
        return Step.LINEAR

    def sympy(self, node):
        return _ADDCMUL

    def linearize(self, node, ctx, carried=None):
        x, t1, t2 = node.args[:3]
        value = float(bound_args(node)["value"])
        pieces = [_piece(node, x, ctx)]
        moving = [t for t in (t1, t2) if isinstance(t, fx.Node) and ctx.varying(t)]
        carried = carried if len(moving) > 1 else (moving or [t1])[0]
        prod = _piece(node, carried, ctx, value)
        prod.factors = list(prod.factors) + [ctx.const_factor(t2 if carried is t1 else t1)]
        pieces.append(prod)
        return Linearization(pieces)


_ADDCMUL = SympyForm(("input", "tensor1", "tensor2", "value"),
                     lambda a: a["input"] + _value(a) * a["tensor1"] * a["tensor2"])
