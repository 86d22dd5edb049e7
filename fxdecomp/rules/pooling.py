"""Windowed pooling: average pooling is linear (per spatial axis a fixed
averaging matrix), max pooling is not, but keeps the batch and channel atoms so
tokens and channels can still be followed through it."""
from __future__ import annotations

import torch

from ..core.atoms import In
from ..core.step import Step
from ..core.terms import Factor, Linearization, Piece
from .base import Rule, UnaryRule, bound_args
from .registry import rules_for

aten = torch.ops.aten
KEYS = {1: ("pos",), 2: ("row", "col"), 3: ("depth", "row", "col")}


def _per_dim(v, n: int) -> list:
    if v is None:
        return [None] * n
    v = [v] if isinstance(v, int) else list(v)
    return v * n if len(v) == 1 else v


def _pool_axes(node, ctx, n_spatial: int):
    """Leading (batch, channel) atoms kept; every changed spatial axis gets a fresh grid atom.
    Records the node as mixing positions (a branch holding it is of kind ``conv``)."""
    ctx.record_position_mixing(node)
    src = list(ctx.raw_axes(node.args[0]))
    in_shape, out_shape = ctx.shape(node.args[0]), ctx.shape(node)
    keys = KEYS.get(n_spatial, tuple(f"dim{i}" for i in range(n_spatial)))
    lead = len(src) - n_spatial
    for i in range(n_spatial):
        d = lead + i
        if out_shape[d] != in_shape[d]:
            src[d] = ctx.table.axis(out_shape[d], ("grid", keys[i], node.name), "spatial")
    return src


def _n_spatial(node) -> int:
    name = str(node.target)
    return 1 if "1d" in name else 3 if "3d" in name else 2


@rules_for(aten.avg_pool1d, aten.avg_pool2d, aten.avg_pool3d)
class AvgPoolRule(UnaryRule):
    """``avg_pool``: per spatial axis a matrix M[out, in] holding 1/count on the window.

    PyTorch's divisor (window clipped to the padded input, or to the input when
    ``count_include_pad`` is off) is a product of per-axis counts, so the map
    factorises over axes; ``divisor_override`` is a single scale.
    """

    step = Step.LINEAR

    def axes(self, node, ctx):
        return _pool_axes(node, ctx, _n_spatial(node))

    def _params(self, node, n):
        a = bound_args(node)  # avg_pool1d has no divisor_override
        kernel = _per_dim(a["kernel_size"], n)
        stride = _per_dim(a["stride"] or kernel, n)
        padding = _per_dim(a["padding"] or 0, n)
        include_pad = a["count_include_pad"]
        include_pad = True if include_pad is None else bool(include_pad)
        return kernel, stride, padding, bool(a["ceil_mode"]), include_pad, a.get("divisor_override")

    def linearize(self, node, ctx, carried=None):
        x = node.args[0]
        n = _n_spatial(node)
        kernel, stride, padding, _ceil, include_pad, override = self._params(node, n)
        in_shape, out_shape = ctx.shape(x), ctx.shape(node)
        lead = len(in_shape) - n
        factors, dropped, coef = [], set(), 1.0
        for i in range(n):
            d = lead + i
            k, s, p, n_in, n_out = kernel[i], stride[i], padding[i], in_shape[d], out_shape[d]
            if k == 1 and s == 1 and p == 0:
                continue
            in_axis, out_axis = ctx.axes(x)[d], ctx.axes(node)[d]
            dropped |= set(in_axis)
            if k == s and p == 0 and n_out * k <= n_in:  # whole windows side by side: each k elements
                scale = 1.0 if override is not None else 1.0 / k
                factors.append(Factor(ctx.window(n_out, k, n_in, scale), (out_axis, tuple(In(a) for a in in_axis))))
                continue
            key = ("avg_pool", n_in, n_out, k, s, p, include_pad, override is not None)

            def make(k=k, s=s, p=p, n_in=n_in, n_out=n_out):
                m = torch.zeros(n_out, n_in, dtype=torch.float64)
                for o in range(n_out):
                    start = o * s - p
                    end = min(start + k, n_in + p)
                    lo, hi = max(start, 0), min(end, n_in)
                    count = (end - start) if include_pad else (hi - lo)
                    if override is not None:
                        count = 1
                    if hi > lo:
                        m[o, lo:hi] = 1.0 / count
                return m

            factors.append(Factor(ctx.constant(key, make, f"avgpool_k{k}s{s}"),
                                  (out_axis, tuple(In(a) for a in in_axis))))
        if override is not None:
            coef = 1.0 / float(override)
        atoms = frozenset(ctx.atoms(x)) - dropped
        return Linearization([Piece(arg=x, factors=factors, passthrough=atoms, coef=coef)])


@rules_for(aten.max_pool1d, aten.max_pool2d, aten.max_pool3d)
class MaxPoolRule(Rule):
    """Max pooling: nonlinear (a CNN stem's, or inside a branch); axes as for any pooling."""

    step = Step.NONLINEAR

    def axes(self, node, ctx):
        return _pool_axes(node, ctx, _n_spatial(node))
