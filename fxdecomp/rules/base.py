"""Op rules: what an op does to atoms, and how it is linear (if it is).

Each ATen op the compiler meets is looked up here. A rule answers, for one node of its op:

* ``axes``: the atoms of the output, given its inputs' atoms (every op needs this, linear or
  not, so tokens and heads can be followed);
* ``linearize``: the output as a sum of linear maps of its varying inputs plus constants
  (only for ops that are linear, or linear in one operand once the others are frozen at
  their actual values);
* ``classify``: its :class:`~fxdecomp.core.step.Step` (how the walk treats it), given which
  operands vary; by default read from ``step``, what the op is: ``LINEAR``, ``MIXING``
  (linear in one operand with the others frozen: products, matmuls, attention), ``NORM``
  (affine once its statistics are frozen) or ``NONLINEAR``;
* ``reads``: which indices of an input the output's indices need (the demand pass narrows
  what later ops read through it: a ``select`` reads one row, an elementwise op what it
  writes); by default all of them;
* ``sympy``: the op as a sympy expression of its arguments (a :class:`SympyForm`), for ops
  that are pointwise: a run of them is read as one expression by the symbolic pass, which
  finds where it is affine though no single op is; by default none.

Every hook receives the one :class:`~fxdecomp.core.context.RuleContext`.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch.fx as fx
from torch.fx.operator_schemas import normalize_function

from .. import kernels
from ..core.atoms import Axis
from ..core.context import RuleContext
from ..core.step import Step
from ..core.terms import Linearization


class Rule:
    """What one op does; subclass it (and ``fxdecomp.register_rule(op, MyRule())``) to teach
    the compiler an op. The defaults describe an opaque nonlinear op."""

    step: Step = Step.NONLINEAR

    def __init_subclass__(cls, **kw):
        """A rule written for the old contract is refused with the fix, not misread."""
        super().__init_subclass__(**kw)
        for old in ("linearity", "kind"):
            if isinstance(cls.__dict__.get(old), str):
                raise TypeError(
                    f"{cls.__name__}.{old} = {cls.__dict__[old]!r}: a rule now says what its op is with "
                    "step = Step.LINEAR, Step.MIXING (was 'bilinear'), Step.NORM or Step.NONLINEAR "
                    "(from fxdecomp.rules import Step)")
        lin = cls.__dict__.get("linearize")
        if lin is not None and _positional_count(lin) < 4:
            raise TypeError(
                f"{cls.__name__}.linearize must take (self, node, ctx, carried): carried is the operand the "
                "walk carries through a product of several varying operands (None where at most one varies)")

    def axes(self, node: fx.Node, ctx: RuleContext) -> Any:
        """Atoms of the output (list of axes; a list of such lists for tuple outputs), from the
        inputs' ``ctx.raw_axes``."""
        return ctx.fresh(node)

    def carriable(self, node: fx.Node) -> Sequence[fx.Node]:
        """Operands the output is linear in (when the others are frozen)."""
        return list(node.all_input_nodes)

    def linearize(self, node: fx.Node, ctx: RuleContext, carried: fx.Node | None = None) -> Linearization:
        """The output as pieces: linear maps of varying inputs (``ctx.axes``) and constants.
        ``carried``: for a node whose step is ``MIXING``, the operand the walk carries (the
        others are frozen at their actual values); None otherwise."""
        raise NotImplementedError(f"{type(self).__name__} does not linearize")

    def reads(self, node: fx.Node, arg: fx.Node, need: tuple, ctx: RuleContext) -> tuple | None:
        """What the output reads of input ``arg`` when the indices ``need`` of the output are
        read: per axis of ``arg``, a frozenset of indices or ``ALL``; None when it reads none.
        ``need`` has one such entry per axis of the output."""
        return full(ctx.shape(arg))

    def sympy(self, node: fx.Node) -> "SympyForm | None":
        """The op as a sympy expression of its arguments, if it is pointwise (None: it has none)."""
        return None

    def classify(self, node: fx.Node, varying) -> Step:
        """The node's step, given which inputs vary (``varying(x)``)."""
        if self.step is Step.MIXING:
            moving = [a for a in node.all_input_nodes if varying(a)]
            if len(moving) <= 1:
                ok = set(self.carriable(node))
                return Step.LINEAR if all(a in ok for a in moving) else Step.NONLINEAR
            return Step.MIXING
        return self.step


def _positional_count(fn) -> int:
    """How many positional arguments ``fn`` takes (a large number for ``*args``)."""
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return 99
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


#: in ``Rule.reads``: every index of an axis
ALL = None


def full(shape) -> tuple:
    """``Rule.reads``' answer for an input whose every index is read."""
    return tuple(ALL for _ in shape) if shape is not None else ()


def broadcast_reads(shape: tuple, out_shape: tuple, need: tuple) -> tuple:
    """``Rule.reads`` for an elementwise op: an input broadcast to the output's shape reads, on
    each axis it has at full size, the indices the output needs, and all of a broadcast one."""
    off = len(out_shape) - len(shape)
    if off < 0 or len(need) != len(out_shape):
        return tuple(ALL for _ in shape)
    return tuple(need[off + i] if s == out_shape[off + i] else ALL for i, s in enumerate(shape))


@dataclass(frozen=True)
class SympyForm:
    """An op as a sympy expression (``Rule.sympy``). ``operands`` name the arguments that are
    values: the symbolic pass gives each as a sympy expression (a symbol, or the expression of
    a value computed in the same run of pointwise ops; numbers as sympy numbers) and
    ``build(args)`` makes the expression from the bound arguments, the others as they are
    (None: not expressible for these arguments). ``functions``: the torch function evaluating
    each sympy function the expression may hold, by name (made part of
    ``kernels.POINTWISE_FUNCTIONS``, which evaluates slopes at run time). With
    ``defaults_only`` the form holds only where no argument beyond the operands is given (a
    function evaluated with torch's defaults)."""

    operands: tuple
    build: Callable[[dict], Any]
    functions: dict = field(default_factory=dict)
    defaults_only: bool = False

    def __post_init__(self):
        for name, fn in self.functions.items():
            kernels.register_pointwise(name, fn)

    def holds(self, node: fx.Node) -> bool:
        return not self.defaults_only or (len(node.args) <= len(self.operands) and not node.kwargs)


class UnaryRule(Rule):
    """A rule for ops whose output is linear in their first argument only."""

    def carriable(self, node: fx.Node) -> Sequence[fx.Node]:
        return [node.args[0]]


def bound_args(node: fx.Node) -> dict:
    """The op's arguments by name, defaults filled in, as torch.fx binds them to the op's schema
    (``normalize_function``, which calls a schema's ``self`` argument ``input``); ``{}`` for a
    target without a schema (a Python operator). Optional arguments may be left out of
    ``node.args`` or given as keywords, and positions differ between overloads (``var.dim`` has
    ``unbiased`` where ``var.correction`` has none), names do not."""
    if getattr(node.target, "_schema", None) is None:
        return {}
    bound = normalize_function(node.target, node.args, node.kwargs, normalize_to_only_use_kwargs=True)
    if bound is None:
        raise ValueError(f"torch.fx cannot bind the arguments of {node.format_node()} to {node.target}'s schema")
    return bound.kwargs


def broadcast_axes(node: fx.Node, args: Sequence[Any], ctx: RuleContext) -> list[Axis]:
    """Output atoms of a broadcasting op; unifies the atoms of aligned axes."""
    out_shape = ctx.shape(node)
    nd = len(out_shape)
    out: list[Axis | None] = [None] * nd
    for t in args:
        if not isinstance(t, fx.Node) or ctx.shape(t) is None:
            continue
        t_axes, t_shape = ctx.raw_axes(t), ctx.shape(t)
        off = nd - len(t_shape)
        for i, size in enumerate(t_shape):
            if size == 1:
                continue
            j = off + i
            if out[j] is None:
                out[j] = t_axes[i]
            elif not ctx.unify(out[j], t_axes[i]):
                pass  # the same elements split differently: the operand is regrouped (see elementwise)
    return [o if o is not None else ctx.table.axis(out_shape[j], ("broadcast", node.name), "other")
            for j, o in enumerate(out)]


def norm_dim(d: int, nd: int) -> int:
    return d + nd if d < 0 else d
