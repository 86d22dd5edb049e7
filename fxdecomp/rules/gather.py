"""``gather`` along one axis: linear in its input once the index is frozen at its actual value,
as an attention's weights are frozen.

``out[.., j, ..] = x[.., index[.., j, ..], ..]`` is ``Σ_i x[.., i, ..] · P[.., j, .., i]`` with
``P`` the one-hot of the index. ViTMAE shuffles its patch tokens this way (an index drawn per
image, ``argsort`` of noise): a permutation of the token axis, per image. The gathered axis
keeps its role (tokens stay tokens, so attention over them still splits by source token) but
is an axis of its own: position ``j`` is another patch in each image, so it has no grid
(row, col). An index repeated along an axis (``ids.unsqueeze(-1).repeat(1, 1, D)``) is
one-hot only along its own axes, not along the repeated one.
"""
from __future__ import annotations

import torch
import torch.fx as fx

from ..core.atoms import In
from ..core.step import Step
from ..core.terms import Derived, Factor, Linearization, NodeValue, Piece
from .base import Rule, bound_args, norm_dim
from .movement import dominant_role
from .registry import rules_for

aten = torch.ops.aten
#: ops that only repeat their input along axes where it has size 1
_REPEATS = (aten.repeat.default, aten.expand.default, aten.expand_as.default, aten.broadcast_to.default)


def gather_selection(index: torch.Tensor, like: torch.Tensor, size: int, squeeze: tuple) -> torch.Tensor:
    """The one-hot of ``index`` over ``size`` classes (last axis), in ``like``'s dtype; the axes in
    ``squeeze`` (where the index is only repeated) are dropped first."""
    for d in sorted(squeeze, reverse=True):
        index = index.select(d, 0)
    return torch.nn.functional.one_hot(index.long(), size).to(like.dtype)


def _base_index(index: fx.Node) -> tuple[fx.Node, tuple]:
    """(the index before it was repeated, the axes along which it was): ``P`` need not be
    materialised along them."""
    src = index
    while isinstance(src, fx.Node) and src.target in _REPEATS:
        src = src.args[0]
    if src is index:
        return index, ()
    shape = src.meta.get("tensor_meta").shape if src.meta.get("tensor_meta") is not None else None
    out = index.meta["tensor_meta"].shape
    if shape is None or len(shape) != len(out):
        return index, ()
    return src, tuple(d for d, (a, b) in enumerate(zip(shape, out)) if a == 1 and b != 1)


@rules_for(aten.gather)
class GatherRule(Rule):
    """``gather(x, dim, index)``: a frozen selection along ``dim``."""

    step = Step.LINEAR

    def carriable(self, node):
        return [node.args[0]]

    def classify(self, node, varying):
        return Step.LINEAR if varying(node.args[0]) else Step.NONLINEAR

    def _spec(self, node):
        a = bound_args(node)
        x, index = a["input"], a["index"]
        return x, norm_dim(a["dim"], len(x.meta["tensor_meta"].shape)), index

    def axes(self, node, ctx):
        x, dim, index = self._spec(node)
        src, shape, out = list(ctx.raw_axes(x)), ctx.shape(x), ctx.shape(node)
        axes = []
        for d, (a, n, m) in enumerate(zip(src, shape, out)):
            if d == dim:
                axis = ctx.table.axis(m, ("gather", node.name), "other")
                ctx.table.promote(axis, dominant_role(ctx.table, a))
                axes.append(axis)
            else:
                axes.append(a if n == m else ctx.table.axis(m, ("gather", node.name, d), "other"))
        return axes

    def linearize(self, node, ctx, carried=None):
        x, dim, index = self._spec(node)
        if any(n != m for d, (n, m) in enumerate(zip(ctx.shape(x), ctx.shape(node))) if d != dim):
            raise ctx.unsupported(node, "its index is smaller than its input along an axis it does not gather")
        base, repeated = _base_index(index)
        out_axes, in_axis = ctx.axes(node), ctx.axes(x)[dim]
        size = ctx.shape(x)[dim]
        p = Derived(gather_selection, (NodeValue(base), NodeValue(x), size, repeated), f"select_{node.name}")
        axes = tuple(ax for d, ax in enumerate(out_axes) if d not in repeated) + (tuple(In(a) for a in in_axis),)
        keep = frozenset(ctx.atoms(x)) - set(in_axis)
        return Linearization([Piece(arg=x, factors=[Factor(p, axes)], passthrough=keep)])
