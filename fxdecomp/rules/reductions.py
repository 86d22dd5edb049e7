"""Reductions over axes: means and sums are linear (pooling), the rest are not."""
from __future__ import annotations

from math import prod

import torch

from ..core.atoms import In
from ..core.step import Step
from ..core.terms import Factor, Linearization, Piece
from .base import UnaryRule, bound_args, norm_dim
from .movement import TupleRule
from .registry import rules_for

aten = torch.ops.aten


def _reduce_spec(node, nd):
    """(reduced dims, keepdim), read by argument name (every overload calls them ``dim`` and
    ``keepdim``; no ``dim``, or an empty one, reduces everything)."""
    args = bound_args(node)
    dims = args.get("dim")
    if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
        dims = list(range(nd))
    elif isinstance(dims, int):
        dims = [dims]
    return sorted(norm_dim(d, nd) for d in dims), bool(args.get("keepdim") or False)


def _reduced_axes(node, ctx, src):
    dims, keep = _reduce_spec(node, len(src))
    return [() if i in dims else a for i, a in enumerate(src)] if keep else \
        [a for i, a in enumerate(src) if i not in dims]


class _Reduction(UnaryRule):
    def axes(self, node, ctx):
        return _reduced_axes(node, ctx, list(ctx.raw_axes(node.args[0])))


@rules_for(aten.mean, aten.sum)
class MeanRule(_Reduction):
    """Mean (or sum) over axes: a ones factor on the reduced atoms, scaled."""

    step = Step.LINEAR


    def linearize(self, node, ctx, carried=None):
        x = node.args[0]
        shape = ctx.shape(x)
        dims, _ = _reduce_spec(node, len(shape))
        n = prod(shape[d] for d in dims)
        coef = 1.0 / n if "mean" in str(node.target) else 1.0
        reduced = [a for d in dims for a in ctx.axes(x)[d]]
        factors = [ctx.ones(a) for a in reduced]
        atoms = frozenset(ctx.atoms(x)) - set(reduced)
        if ctx.varying(x):
            return Linearization([Piece(arg=x, factors=factors, passthrough=atoms, coef=coef)])
        return Linearization([Piece(const=ctx.const_factor(x), factors=factors, passthrough=atoms, coef=coef)])


@rules_for(aten.amax, aten.amin, aten.var, aten.std, aten.linalg_vector_norm, aten.norm,
           aten.logsumexp, aten.prod, aten.argmax, aten.argmin)
class NonlinearReduction(_Reduction):
    step = Step.NONLINEAR


@rules_for(aten.var_mean, aten.std_mean)
class MomentsRule(TupleRule):
    """``var_mean``/``std_mean``: two reductions of the same axes, returned together."""

    step = Step.NONLINEAR

    def axes(self, node, ctx):
        out = _reduced_axes(node, ctx, list(ctx.raw_axes(node.args[0])))
        return [out, list(out)]


@rules_for(aten.adaptive_avg_pool2d, aten.adaptive_avg_pool1d, aten._adaptive_avg_pool2d)
class AdaptiveAvgPoolRule(UnaryRule):
    """Adaptive average pooling: per spatial axis a fixed averaging matrix."""

    step = Step.LINEAR

    def _out(self, node, shape):
        size = node.args[1]
        size = [size] if isinstance(size, int) else list(size)
        nsp = len(size)
        return [(len(shape) - nsp + i, s if s is not None else shape[len(shape) - nsp + i])
                for i, s in enumerate(size)]

    def axes(self, node, ctx):
        src = list(ctx.raw_axes(node.args[0]))
        shape = ctx.shape(node.args[0])
        for d, n in self._out(node, shape):
            if n != shape[d]:
                src[d] = ctx.table.axis(n, ("grid", ("row", "col")[d - len(shape) + 2] if len(shape) >= 2 else "pos"),
                                       "spatial")
        return src


    def linearize(self, node, ctx, carried=None):
        x = node.args[0]
        shape = ctx.shape(x)
        factors, dropped = [], set()
        for d, n in self._out(node, shape):
            size = shape[d]
            if n == size:
                continue
            in_axis, out_axis = ctx.axes(x)[d], ctx.axes(node)[d]

            def make(n=n, size=size):
                m = torch.zeros(n, size, dtype=torch.float64)
                for i in range(n):
                    a, b = (i * size) // n, -((-(i + 1) * size) // n)
                    m[i, a:b] = 1.0 / (b - a)
                return m

            factors.append(Factor(ctx.constant(("adaptive_avg", size, n), make, f"avgpool{size}to{n}"),
                                  (out_axis, tuple(In(a) for a in in_axis))))
            dropped |= set(in_axis)
        atoms = frozenset(ctx.atoms(x)) - dropped
        return Linearization([Piece(arg=x, factors=factors, passthrough=atoms)])
