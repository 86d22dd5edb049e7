"""A maximum (or minimum) over an axis: linear in its input once *which* element it selects
is frozen, as an attention's weights are frozen at their actual values.

``max(x, dim).values == Σ_k x[.., k, ..] · S[.., k, ..]`` with ``S`` the one-hot of the
selected index: exact at that input, and the max's own gradient. Hiera pools its queries and
its stage shortcut this way (``view(B, stride, -1, D).max(dim=1)``). The walk passes through
it only with ``linearize=True`` (the affinity pass reads :attr:`Step.SELECTION` so); without
it, it is a nonlinearity like any other.
"""
from __future__ import annotations

import torch

from ..core.atoms import In
from ..core.step import Step
from ..core.terms import Derived, Factor, Linearization, NodeValue, Piece
from .base import bound_args, norm_dim
from .movement import TupleRule
from .registry import rules_for

aten = torch.ops.aten


def max_selection(x: torch.Tensor, dim: int, largest: bool) -> torch.Tensor:
    """The one-hot (in ``x``'s shape) of the index ``max``/``min`` over ``dim`` returns: the same
    op, so ties are broken as the model broke them."""
    index = (torch.max(x, dim, keepdim=True) if largest else torch.min(x, dim, keepdim=True)).indices
    return torch.zeros_like(x).scatter_(dim, index, 1.0)


@rules_for(aten.max.dim, aten.min.dim)
class MaxDimRule(TupleRule):
    """``max.dim``/``min.dim`` -> (values, indices): the values are a frozen selection of the
    input, the indices are not part of the stream."""

    step = Step.SELECTION

    def _dim(self, node, nd: int) -> tuple[int, bool]:
        a = bound_args(node)
        return norm_dim(a["dim"], nd), bool(a.get("keepdim") or False)

    def axes(self, node, ctx):
        src = list(ctx.raw_axes(node.args[0]))
        dim, keep = self._dim(node, len(src))
        out = [() if i == dim else a for i, a in enumerate(src)] if keep else src[:dim] + src[dim + 1:]
        return [out, list(out)]

    def item_step(self, node, i) -> Step:
        return Step.SELECTION if i == 0 else Step.NONLINEAR

    def item_linearize(self, node, i, item, ctx):
        if i != 0:
            raise ctx.unsupported(item, "it reads the indices a max selects, which are not values of the stream")
        x = node.args[0]
        axes = ctx.axes(x)
        dim, _ = self._dim(node, len(axes))
        largest = "max" in str(node.target)
        select = Derived(max_selection, (NodeValue(x), dim, largest), f"select_{node.name}")
        factor = Factor(select, tuple(tuple(In(a) for a in ax) if d == dim else tuple(ax)
                                      for d, ax in enumerate(axes)))
        keep = frozenset(ctx.atoms(x)) - set(axes[dim])
        return Linearization([Piece(arg=x, factors=[factor], passthrough=keep)])
