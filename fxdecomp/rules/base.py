"""Op rules: what an op does to atoms, and how it is linear (if it is).

Each ATen op the compiler meets is looked up here. A rule answers two
questions:

* ``axes``: the atoms of the op's output, given its inputs' atoms (every op
  needs this, linear or not, so tokens and heads can be followed);
* ``linearize``: the op's output as a sum of linear maps of its varying inputs
  plus constants (only for ops that are linear, or linear in one operand once
  the others are frozen at their actual values).

``linearity`` is one of ``linear``, ``bilinear`` (linear in one operand with the
others frozen: products, matmuls, attention), ``norm`` (affine once its
statistics are frozen) or ``nonlinear``. It is what the op is; how the walk treats
one node of it (its *step*: ``linear``, ``mixing``, ``norm`` or ``nonlinear``, given
which operands vary) is ``classify``'s answer.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch.fx as fx

from ..core.atoms import Axis
from ..core.terms import Linearization

LINEAR, BILINEAR, NORM, NONLINEAR = "linear", "bilinear", "norm", "nonlinear"
LINEARITIES = (LINEAR, BILINEAR, NORM, NONLINEAR)


class Rule:
    """What one op does; subclass it (and ``fxdecomp.register_rule(op, MyRule())``) to teach
    the compiler an op. The defaults describe an opaque nonlinear op."""

    linearity: str = NONLINEAR

    def __init_subclass__(cls, **kw):
        """A rule written against the old name (``kind = LINEAR``) keeps working."""
        super().__init_subclass__(**kw)
        if "kind" in cls.__dict__ and "linearity" not in cls.__dict__ and isinstance(cls.__dict__["kind"], str):
            cls.linearity = cls.__dict__["kind"]

    def axes(self, node: fx.Node, ax) -> Any:
        """Atoms of the output (list of axes; a list of such lists for tuple outputs)."""
        return ax.fresh(node)

    def carriable(self, node: fx.Node) -> Sequence[fx.Node]:
        """Operands the output is linear in (when the others are frozen)."""
        return [a for a in tensor_args(node)]

    def linearize(self, node: fx.Node, ctx) -> Linearization:
        raise NotImplementedError(f"{type(self).__name__} does not linearize")

    def classify(self, node: fx.Node, varying) -> str:
        """The node's step: ``linear``, ``mixing``, ``norm`` or ``nonlinear``, given which
        inputs vary (``varying(x)``)."""
        if self.linearity == LINEAR:
            return "linear"
        if self.linearity == NORM:
            return "norm"
        if self.linearity == BILINEAR:
            moving = [a for a in tensor_args(node) if varying(a)]
            if len(moving) <= 1:
                ok = set(self.carriable(node))
                return "linear" if all(a in ok for a in moving) else "nonlinear"
            return "mixing"
        return "nonlinear"


class UnaryRule(Rule):
    """A rule for ops whose output is linear in their first argument only."""

    def carriable(self, node: fx.Node) -> Sequence[fx.Node]:
        return [node.args[0]]


def tensor_args(node: fx.Node) -> list[fx.Node]:
    """Node-valued arguments (flattening lists such as cat's), in order, unique."""
    seen: list[fx.Node] = []
    for a in _flatten((node.args, node.kwargs)):
        if isinstance(a, fx.Node) and a not in seen:
            seen.append(a)
    return seen


def bound_args(node: fx.Node) -> dict:
    """The op's arguments by schema name, defaults filled in (``{}`` for targets without a
    schema): positions differ between overloads (``var.dim`` has ``unbiased`` where
    ``var.correction`` has none, ``linalg_vector_norm`` puts ``ord`` before ``dim``), names do not."""
    schema = getattr(node.target, "_schema", None)
    if schema is None:
        return {}
    out = {}
    for i, arg in enumerate(schema.arguments):
        default = arg.default_value if arg.has_default_value() else None
        if not arg.kwarg_only and i < len(node.args):
            out[arg.name] = node.args[i]
        else:
            out[arg.name] = node.kwargs.get(arg.name, default)
    return out


def _flatten(x):
    if isinstance(x, (list, tuple)):
        for y in x:
            yield from _flatten(y)
    elif isinstance(x, dict):
        for y in x.values():
            yield from _flatten(y)
    else:
        yield x


def broadcast_axes(node: fx.Node, args: Sequence[Any], ax) -> list[Axis]:
    """Output atoms of a broadcasting op; unifies the atoms of aligned axes."""
    out_shape = ax.shape(node)
    nd = len(out_shape)
    out: list[Axis | None] = [None] * nd
    for t in args:
        if not isinstance(t, fx.Node) or ax.shape(t) is None:
            continue
        t_axes, t_shape = ax.axes(t), ax.shape(t)
        off = nd - len(t_shape)
        for i, size in enumerate(t_shape):
            if size == 1:
                continue
            j = off + i
            if out[j] is None:
                out[j] = t_axes[i]
            elif not ax.unify(out[j], t_axes[i]):
                pass  # the same elements split differently: the operand is regrouped (see elementwise)
    return [o if o is not None else ax.table.axis(out_shape[j], ("broadcast", node.name), "other")
            for j, o in enumerate(out)]


def norm_dim(d: int, nd: int) -> int:
    return d + nd if d < 0 else d
