"""Weighted maps: linear layers, convolutions and matrix products.

Matrix products with two varying operands (attention scores times values) are
linear in the carried operand once the other is frozen; the contracted atom of
such a product is where a branch can be split by source token, and its shared
non-batch atoms are where it can be split by head.
"""
from __future__ import annotations

import torch
import torch.fx as fx

from ..core.atoms import In
from ..core.step import Step
from ..core.terms import Factor, Linearization, Piece
from .base import Rule, UnaryRule, bound_args
from .registry import rules_for

aten = torch.ops.aten


def _ins(axis) -> tuple:
    return tuple(In(a) for a in axis)


def split_info(shared_batch: list, contracted: tuple, table) -> dict:
    """Which atoms of an attention-weighted sum name heads, windows and tokens."""
    head, window = [], []
    for a in shared_batch:
        role = table.find(a).role if hasattr(table, "find") else a.role
        if role == "batch":
            continue
        (window if role == "spatial" else head).append(a)
    return {"head": tuple(head), "window": tuple(window), "token": tuple(contracted)}


@rules_for(aten.linear)
class LinearRule(UnaryRule):
    step = Step.MIXING

    def axes(self, node, ctx):
        x, w, b = node.args[0], node.args[1], bound_args(node)["bias"]
        xs, ws = ctx.raw_axes(x), ctx.raw_axes(w)
        ctx.unify(xs[-1], ws[1])
        ctx.table.promote(ws[0], "channel")
        if isinstance(b, fx.Node):
            ctx.unify(ctx.raw_axes(b)[0], ws[0])
        return list(xs[:-1]) + [ws[0]]


    def linearize(self, node, ctx, carried=None):
        x, w, b = node.args[0], node.args[1], bound_args(node)["bias"]
        if ctx.varying(w):
            raise ctx.unsupported(node, "its weight depends on the input")
        out_axis = ctx.axes(node)[-1]
        in_axis = ctx.axes(x)[-1]
        pieces = []
        if isinstance(x, fx.Node) and ctx.varying(x):
            pieces.append(Piece(arg=x, factors=[Factor(ctx.value(w), (out_axis, _ins(in_axis)))],
                                passthrough=frozenset(ctx.atoms(x)) - set(in_axis)))
        if isinstance(b, fx.Node):
            pieces.append(Piece(const=Factor(ctx.value(b), (out_axis,)), passthrough=frozenset(out_axis),
                                label=ctx.param_name(b)))
        return Linearization(pieces)


def _conv_params(node):
    """(input, weight, bias, stride, padding, dilation, groups), by name: ``convolution`` has
    ``transposed`` and ``output_padding`` where ``conv2d`` has none."""
    a = bound_args(node)
    if a.get("transposed"):
        raise NotImplementedError("transposed convolution")
    return (a["input"], a["weight"], a["bias"], a["stride"] or 1, a["padding"] or 0, a["dilation"] or 1,
            a["groups"] or 1)


def _per_dim(v, n):
    return [v] * n if isinstance(v, int) else list(v)


@rules_for(aten.conv1d, aten.conv2d, aten.conv3d, aten.convolution)
class ConvRule(UnaryRule):
    """Convolution as factors: the kernel, and per spatial axis a 0/1 tensor S[out, tap, in]."""

    step = Step.MIXING
    KEYS = {1: ("pos",), 2: ("row", "col"), 3: ("depth", "row", "col")}

    def _geometry(self, node, ax_shape):
        x, w, b, stride, padding, dilation, groups = _conv_params(node)
        xs, ws = ax_shape(x), ax_shape(w)
        nsp = len(ws) - 2
        stride, dilation = _per_dim(stride, nsp), _per_dim(dilation, nsp)
        if isinstance(padding, str):
            if padding == "valid":
                padding = [0] * nsp
            else:  # same
                padding = [d * (k - 1) // 2 for d, k in zip(dilation, ws[2:])]
        padding = _per_dim(padding, nsp)
        dims = []
        out_shape = ax_shape(node)
        for i in range(nsp):
            dims.append(dict(k=ws[2 + i], s=stride[i], p=padding[i], d=dilation[i],
                             n_in=xs[2 + i], n_out=out_shape[2 + i]))
        return x, w, b, groups, dims

    def axes(self, node, ctx):
        x, w, b, groups, dims = self._geometry(node, ctx.shape)
        xa, wa = ctx.raw_axes(x), ctx.raw_axes(w)
        c_in, out_ch = ctx.shape(x)[1], ctx.shape(w)[0]
        if groups == 1:
            ctx.unify(xa[1], wa[1])
        else:
            xg = ctx.table.reshape([xa[1]], [groups, c_in // groups])
            wg = ctx.table.reshape([wa[0]], [groups, out_ch // groups])
            if xg is None or wg is None:
                return ctx.fresh(node)
            ctx.unify(xg[0], wg[0])
            if c_in // groups > 1:
                ctx.unify(xg[1], wa[1])
        ctx.table.promote(wa[0], "channel")
        if isinstance(b, fx.Node):
            ctx.unify(ctx.raw_axes(b)[0], wa[0])
        keys = self.KEYS.get(len(dims), tuple(f"dim{i}" for i in range(len(dims))))
        out = [xa[0], wa[0]]
        kernels = []
        for i, g in enumerate(dims):
            if g["k"] == 1 and g["s"] == 1 and g["p"] == 0:
                out.append(xa[2 + i])
                kernels.append(None)
                continue
            out.append(ctx.table.axis(g["n_out"], ("grid", keys[i], node.name), "spatial"))
            k_axis = ctx.table.axis(g["k"], ("kernel", node.name, i), "other")
            if k_axis:
                ctx.unify(wa[2 + i], k_axis)
            kernels.append(k_axis)
        ctx.record_kernels(node, kernels)
        return out


    def linearize(self, node, ctx, carried=None):
        x, w, b, groups, dims = self._geometry(node, ctx.shape)
        if ctx.varying(w):
            raise ctx.unsupported(node, "its weight depends on the input")
        xa = ctx.axes(x)
        out = ctx.axes(node)
        kernels = ctx.kernels(node) or [None] * len(dims)
        pass_atoms = set(xa[0])
        if groups > 1:
            group_atoms = set(a for a in out[1] if a in set(xa[1]))
            pass_atoms |= group_atoms
        else:
            group_atoms = set()
        w_axes = [out[1], tuple(In(a) for a in xa[1] if a not in group_atoms)]
        w_axes += [tuple(ctx.resolve(k)) if k else () for k in kernels]
        factors = [Factor(ctx.value(w), tuple(w_axes))]
        for i, g in enumerate(dims):
            if kernels[i] is None and g["k"] == 1 and g["s"] == 1 and g["p"] == 0:
                pass_atoms |= set(xa[2 + i])
                continue
            taps = ctx.taps(g["n_out"], g["k"], g["n_in"], g["s"], g["p"], g["d"])
            k_axis = tuple(ctx.resolve(kernels[i])) if kernels[i] else ()
            factors.append(Factor(taps, (out[2 + i], k_axis, _ins(xa[2 + i]))))
        pieces = []
        if ctx.varying(x):
            pieces.append(Piece(arg=x, factors=factors, passthrough=frozenset(pass_atoms)))
        if isinstance(b, fx.Node):
            pieces.append(Piece(const=Factor(ctx.value(b), (out[1],)), passthrough=frozenset(out[1]),
                                label=ctx.param_name(b)))
        return Linearization(pieces)


def _split_by_size(axis: tuple, sizes) -> list[tuple]:
    """Cut a resolved axis into runs of atoms whose sizes multiply to ``sizes`` (in order)."""
    out, k = [], 0
    for want in sizes:
        run, got = [], 1
        while got < want:
            run.append(axis[k])
            got *= axis[k].size
            k += 1
        if got != want:
            raise ValueError(f"axis {axis} cannot be cut into sizes {tuple(sizes)}")
        out.append(tuple(run))
    return out


@rules_for(aten.im2col)
class Im2colRule(UnaryRule):
    """``unfold``: [B, C, H, W] -> [B, C·kh·kw, oh·ow], each output column one window's pixels.

    A 0/1 map, factorised as a convolution's is: per spatial axis the taps S[out, tap, in].
    The output's channel axis is (channels, row tap, column tap), its position axis
    (out rows, out columns): a batch folded with positions later (TNT's pixel-level
    transformer runs on [B·patches, pixels, C]) keeps the batch atom."""

    step = Step.LINEAR

    @staticmethod
    def _geometry(node, shape):
        x, kernel, dilation, padding, stride = node.args[:5]
        in_shape = shape(x)
        dims = []
        for i in range(2):
            n_in = in_shape[2 + i]
            n_out = (n_in + 2 * padding[i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1
            dims.append(dict(k=kernel[i], s=stride[i], p=padding[i], d=dilation[i], n_in=n_in, n_out=n_out))
        return x, dims

    def axes(self, node, ctx):
        x, dims = self._geometry(node, ctx.shape)
        xa = ctx.raw_axes(x)
        taps, grid = [], []
        for key, g in zip(("row", "col"), dims):
            taps.extend(ctx.table.axis(g["k"], ("kernel", node.name, key), "other"))
            grid.extend(ctx.table.axis(g["n_out"], ("grid", key, node.name), "spatial"))
        ctx.record_position_mixing(node)
        return [xa[0], tuple(xa[1]) + tuple(taps), tuple(grid)]

    def linearize(self, node, ctx, carried=None):
        x, dims = self._geometry(node, ctx.shape)
        xa, out = ctx.axes(x), ctx.axes(node)
        c = ctx.shape(x)[1]
        _, kh, kw = _split_by_size(tuple(out[1]), [c, dims[0]["k"], dims[1]["k"]])
        oh, ow = _split_by_size(tuple(out[2]), [dims[0]["n_out"], dims[1]["n_out"]])
        factors = []
        for g, k_axis, o_axis, in_axis in zip(dims, (kh, kw), (oh, ow), xa[2:]):
            tap = ctx.taps(g["n_out"], g["k"], g["n_in"], g["s"], g["p"], g["d"])
            factors.append(Factor(tap, (o_axis, k_axis, _ins(in_axis))))
        keep = frozenset(a for axis in xa[:2] for a in axis)
        return Linearization([Piece(arg=x, factors=factors, passthrough=keep)])


@rules_for(aten.matmul, aten.bmm, aten.mm)
class MatmulRule(Rule):
    """``a @ b``; with both operands varying, linear in the carried one."""

    step = Step.MIXING

    def axes(self, node, ctx):
        a, b = node.args[0], node.args[1]
        aa, ba = list(ctx.raw_axes(a)), list(ctx.raw_axes(b))
        sa, sb = ctx.shape(a), ctx.shape(b)
        if len(sa) < 2 or len(sb) < 2:
            return ctx.fresh(node)
        ctx.unify(aa[-1], ba[-2])
        batch_a, batch_b = aa[:-2], ba[:-2]
        sha, shb = sa[:-2], sb[:-2]
        nb = max(len(batch_a), len(batch_b))
        batch = []
        for i in range(nb):
            ia, ib = i - (nb - len(batch_a)), i - (nb - len(batch_b))
            x = batch_a[ia] if ia >= 0 and sha[ia] != 1 else None
            y = batch_b[ib] if ib >= 0 and shb[ib] != 1 else None
            if x is not None and y is not None:
                ctx.unify(x, y)
            batch.append(x if x is not None else (y if y is not None else ()))
        return batch + [aa[-2], ba[-1]]

    def linearize(self, node, ctx, carried=None):
        a, b = node.args[0], node.args[1]
        va, vb = ctx.varying(a), ctx.varying(b)
        carried = carried if (va and vb) else (a if va else b)
        other = b if carried is a else a
        ca, oa = ctx.axes(carried), ctx.axes(other)
        if carried is b:  # out = other @ carried; contracted atoms: carried's rows
            contracted = ca[-2]
            f_axes = tuple(oa[:-1]) + (_ins(contracted),)
        else:  # out = carried @ other; contracted atoms: carried's columns
            contracted = ca[-1]
            f_axes = tuple(oa[:-2]) + (_ins(contracted), oa[-1])
        carried_atoms = frozenset(ctx.atoms(carried))
        passthrough = carried_atoms - set(contracted)
        shared = [x for x in ctx.atoms(other) if x in passthrough]
        piece = Piece(arg=carried, factors=[Factor(ctx.value(other) if ctx.varying(other) else
                                                   ctx.const_factor(other).source, f_axes)],
                      passthrough=passthrough,
                      split=split_info(shared, tuple(In(x) for x in contracted), ctx.table))
        return Linearization([piece])
