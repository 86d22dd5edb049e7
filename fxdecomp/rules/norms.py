"""Normalisations. With their statistics frozen at the actual values they are
affine: LayerNorm centres each component on its own and divides by the frozen
scale; its bias, and BatchNorm's shift, become constants (bias components)."""
from __future__ import annotations

from math import prod

import torch
import torch.fx as fx

from .. import kernels
from ..core.atoms import In
from ..core.step import Step
from ..core.terms import Factor, Linearization, Piece
from .base import ALL, UnaryRule, bound_args, full
from .movement import TupleRule
from .registry import rules_for

aten = torch.ops.aten


def _unify_params(ctx, axes, params):
    for p in params:
        if isinstance(p, fx.Node):
            pa = ctx.raw_axes(p)
            if len(pa) == len(axes):
                for a, b in zip(pa, axes):
                    if a or b:
                        ctx.unify(a, b)


def _flat(axes):
    return tuple(a for axis in axes for a in axis)


class _LastDimsNorm(UnaryRule):
    """A norm over the trailing ``normalized_shape`` dims with affine parameters after it."""

    step = Step.NORM
    params = ("weight", "bias")

    def axes(self, node, ctx):
        a = bound_args(node)
        x, shape = a["input"], a["normalized_shape"]
        xa = ctx.raw_axes(x)
        _unify_params(ctx, xa[-len(shape):], [a[p] for p in self.params])
        return list(xa)

    def reads(self, node, arg, need, ctx):
        """Each position reads all of its normalised axes (their statistics), nothing else."""
        a = bound_args(node)
        if a["input"] is not arg:
            return full(ctx.shape(arg))
        nd = len(a["normalized_shape"])
        return need[:-nd] + (ALL,) * nd


@rules_for(aten.layer_norm)
class LayerNormRule(_LastDimsNorm):

    def linearize(self, node, ctx, carried=None):
        a = bound_args(node)
        x, shape, w, b = a["input"], list(a["normalized_shape"]), a["weight"], a["bias"]
        nd = len(shape)
        xa = ctx.axes(x)
        normed, lead = _flat(xa[-nd:]), xa[:-nd]
        d = prod(shape)

        def make():
            return torch.eye(d, dtype=torch.float64) - 1.0 / d

        centre = ctx.constant(("centre", d), make, f"centre{d}")
        factors = [Factor(centre, (normed, tuple(In(a) for a in normed)))]
        if isinstance(w, fx.Node):
            factors.append(Factor(ctx.value(w), tuple(ctx.axes(w))))
        factors.append(Factor(ctx.stats(node), tuple(lead) + ((),) * nd))
        pieces = [Piece(arg=x, factors=factors, passthrough=frozenset(_flat(lead)))]
        if isinstance(b, fx.Node):
            pieces.append(Piece(const=Factor(ctx.value(b), tuple(ctx.axes(b))),
                                passthrough=frozenset(ctx.atoms(b)), label=ctx.param_name(b)))
        return Linearization(pieces)


@rules_for(aten.rms_norm)
class RMSNormRule(_LastDimsNorm):
    params = ("weight",)

    def linearize(self, node, ctx, carried=None):
        a = bound_args(node)
        x, shape, w, eps = a["input"], list(a["normalized_shape"]), a["weight"], a["eps"]
        nd = len(shape)
        xa = ctx.axes(x)
        lead = xa[:-nd]
        factors = []
        if isinstance(w, fx.Node):
            factors.append(Factor(ctx.value(w), tuple(ctx.axes(w))))
        inv = ctx.derived(kernels.rms_inverse, (ctx.value(x), nd, eps), name=f"inv_rms_{node.name}")
        factors.append(Factor(inv, tuple(lead) + ((),) * nd))
        return Linearization([Piece(arg=x, factors=factors, passthrough=frozenset(_flat(lead)))])


def _bn_linearize(node, x, w, b, rm, rv, eps, ctx):
    ch = ctx.axes(x)[1]
    src = lambda n: ctx.value(n) if isinstance(n, fx.Node) else None  # noqa: E731
    scale = ctx.derived(kernels.bn_scale, (src(w), src(rv), float(eps)), name=f"bn_scale_{node.name}")
    shift = ctx.derived(kernels.bn_shift, (src(w), src(b), src(rm), src(rv), float(eps)),
                        name=f"bn_shift_{node.name}")
    atoms = frozenset(ctx.atoms(x))
    label = ctx.param_name(b) if isinstance(b, fx.Node) else f"{ctx.module_of(node)}.shift"
    return Linearization([
        Piece(arg=x, factors=[Factor(scale, (ch,))], passthrough=atoms),
        Piece(const=Factor(shift, (ch,)), passthrough=frozenset(ch), label=label),
    ])


def _bn_axes(node, ctx, params):
    xa = ctx.raw_axes(node.args[0])
    for p in params:
        if isinstance(p, fx.Node):
            ctx.unify(ctx.raw_axes(p)[0], xa[1])
    return list(xa)


class _SavedStatsRule(TupleRule):
    """A norm returning (output, saved statistic, saved statistic): the output is the norm
    (``output``), the statistics are not part of the stream. ``params`` are the arguments
    (weight, bias, ...) indexed by channel; ``norm`` names it in errors."""

    norm = ""
    params: tuple = ()

    def axes(self, node, ctx):
        a = bound_args(node)
        out = _bn_axes(node, ctx, [a[p] for p in self.params])
        return [out, ctx.fresh_like(node, 1), ctx.fresh_like(node, 2)]

    def item_step(self, node, i):
        return self.step if i == 0 else Step.NONLINEAR

    def item_linearize(self, node, i, item, ctx):
        if i != 0:
            raise ctx.unsupported(item, f"it reads {self.norm}'s saved statistics")
        return self.output(node, ctx)

    def output(self, node, ctx) -> Linearization:
        raise NotImplementedError


@rules_for(aten._native_batch_norm_legit_no_training)
class BatchNormEvalRule(_SavedStatsRule):
    """BatchNorm in eval mode: its statistics are constants, so it is plain affine."""

    norm, params = "BatchNorm", ("weight", "bias", "running_mean", "running_var")

    def output(self, node, ctx):
        a = bound_args(node)
        return _bn_linearize(node, a["input"], a["weight"], a["bias"], a["running_mean"], a["running_var"],
                             a["eps"], ctx)


@rules_for(aten.batch_norm)
class BatchNormRule(UnaryRule):
    step = Step.LINEAR

    def axes(self, node, ctx):
        a = bound_args(node)
        return _bn_axes(node, ctx, [a["weight"], a["bias"], a["running_mean"], a["running_var"]])

    def linearize(self, node, ctx, carried=None):
        a = bound_args(node)
        rm = a["running_mean"]
        if a["training"] or not isinstance(rm, fx.Node):
            raise ctx.unsupported(node, "BatchNorm uses batch statistics (call model.eval() first)")
        return _bn_linearize(node, a["input"], a["weight"], a["bias"], rm, a["running_var"], a["eps"], ctx)


def _group_norm_linearize(node, x, groups, w, b, eps, ctx):
    """``(x - mean_g(x)) · rstd_g · w + b`` with the group statistics frozen: the identity
    and the group mean are two pieces, the mean written as a sum over the group's channels
    and over every position, broadcast back (rank one per position axis, so nothing of
    size positions² is built)."""
    xa = ctx.axes(x)
    lead, ch, pos = xa[0], xa[1], xa[2:]
    shape = ctx.shape(x)
    c = shape[1]
    n = (c // groups) * prod(shape[2:])

    def member():
        g = torch.arange(c) // (c // groups)
        return (g[:, None] == g[None, :]).to(torch.float64) / n

    eps = 1e-5 if eps is None else float(eps)
    rstd = ctx.derived(kernels.group_rstd, (ctx.value(x), int(groups), eps), name=f"group_rstd_{node.name}")
    scale = [Factor(rstd, (lead, ch) + ((),) * len(pos))]
    if isinstance(w, fx.Node):
        scale.append(Factor(ctx.value(w), (ch,)))
    mean = [Factor(ctx.constant(("group_mean", c, groups, n), member, f"group_mean{c}"),
                   (ch, tuple(In(a) for a in ch)))]
    for axis in pos:
        size = prod(a.size for a in axis)
        ones = ctx.constant(("ones", size), lambda: torch.ones(size, dtype=torch.float64), "ones")
        mean += [Factor(ones, (tuple(In(a) for a in axis),)), Factor(ones, (axis,))]
    pieces = [Piece(arg=x, factors=list(scale), passthrough=frozenset(ctx.atoms(x))),
              Piece(arg=x, factors=mean + scale, passthrough=frozenset(lead), coef=-1.0)]
    if isinstance(b, fx.Node):
        pieces.append(Piece(const=Factor(ctx.value(b), (ch,)), passthrough=frozenset(ch), label=ctx.param_name(b)))
    return Linearization(pieces)


@rules_for(aten.group_norm)
class GroupNormRule(UnaryRule):
    """GroupNorm (channels first) with its per-sample group statistics frozen."""

    step = Step.NORM

    def axes(self, node, ctx):
        a = bound_args(node)
        return _bn_axes(node, ctx, [a["weight"], a["bias"]])

    def linearize(self, node, ctx, carried=None):
        a = bound_args(node)
        return _group_norm_linearize(node, a["input"], a["num_groups"], a["weight"], a["bias"], a["eps"], ctx)


@rules_for(aten.native_group_norm)
class NativeGroupNormRule(_SavedStatsRule):
    """``native_group_norm(x, w, b, N, C, HxW, groups, eps)``: item 0 as GroupNorm; the
    saved mean and rstd are statistics, not part of the stream."""

    step, norm, params = Step.NORM, "GroupNorm", ("weight", "bias")

    def output(self, node, ctx):
        a = bound_args(node)
        return _group_norm_linearize(node, a["input"], a["group"], a["weight"], a["bias"], a["eps"], ctx)


@rules_for(aten.native_layer_norm)
class UnsupportedNormRule(TupleRule):
    """Norms whose frozen form is not implemented yet: fine inside branches,
    refused where the decomposition would have to pass through them."""

    step = Step.NORM

    def axes(self, node, ctx):
        return [list(ctx.raw_axes(node.args[0])), ctx.fresh_like(node, 1), ctx.fresh_like(node, 2)]

    def item_axes(self, node, i, ctx):
        return self.axes(node, ctx)[i]

    def item_step(self, node, i):
        return Step.NORM if i == 0 else Step.NONLINEAR

    def item_linearize(self, node, i, item, ctx):
        raise ctx.unsupported(node, f"decomposing through {node.target} is not implemented yet")
