"""Fused attention (``scaled_dot_product_attention``), opened up.

The output is linear in the values once the softmax weights are frozen. The
weights are not taken from the fused kernel (which never forms them) but
recomputed on demand from q and k, for just the query rows the readout uses,
and only where a component is split by source token: otherwise a head's term
is the node's own output (``passes/expand.py``, ``_reads_own_value``).
Heads are the shared non-batch axes of weights and values; source tokens are
the axis the weighted sum runs over.
"""
from __future__ import annotations

import torch
import torch.fx as fx

from ..core.atoms import In
from ..core.step import Step
from ..core.terms import AttentionWeights, Factor, Linearization, Piece
from .base import Rule, bound_args
from .layers import split_info
from .registry import rules_for

aten = torch.ops.aten


@rules_for(aten.scaled_dot_product_attention)
class SDPARule(Rule):
    step = Step.MIXING

    def axes(self, node, ctx):
        a = bound_args(node)
        q, k, v = a["query"], a["key"], a["value"]
        qa, ka, va = ctx.raw_axes(q), ctx.raw_axes(k), ctx.raw_axes(v)
        ctx.unify(qa[-1], ka[-1])
        ctx.unify(ka[-2], va[-2])
        nb = len(qa) - 2
        for t_axes, t_shape in ((ka, ctx.shape(k)), (va, ctx.shape(v))):
            off = nb - (len(t_axes) - 2)
            for i in range(len(t_axes) - 2):
                j = i + off
                if 0 <= j < nb and t_shape[i] != 1 and ctx.shape(q)[j] != 1:
                    ctx.unify(qa[j], t_axes[i])
        mask = a.get("attn_mask")
        if isinstance(mask, fx.Node):
            full = list(qa[:-2]) + [qa[-2], ka[-2]]
            ms = ctx.shape(mask)
            off = len(full) - len(ms)
            for i, s in enumerate(ms):
                if s != 1 and i + off >= 0:
                    ctx.unify(full[i + off], ctx.raw_axes(mask)[i])
        return list(qa[:-2]) + [qa[-2], va[-1]]

    def carriable(self, node):
        return [bound_args(node)["value"]]

    def linearize(self, node, ctx, carried=None):
        a = bound_args(node)
        q, k, v, mask = a["query"], a["key"], a["value"], a.get("attn_mask")
        if a.get("dropout_p"):
            raise ctx.unsupported(node, "attention dropout is active (call model.eval() first)")
        if a.get("enable_gqa"):
            raise ctx.unsupported(node, "grouped-query attention (enable_gqa=True) is not supported yet")
        weights = AttentionWeights(
            ctx.value(q), ctx.value(k), ctx.value(mask) if isinstance(mask, fx.Node) else None,
            a.get("scale"), bool(a.get("is_causal")))
        qa, va = ctx.axes(q), ctx.axes(v)
        out = ctx.axes(node)
        contracted = va[-2]
        f_axes = tuple(out[:-2]) + (qa[-2], tuple(In(x) for x in contracted))
        passthrough = frozenset(ctx.atoms(v)) - set(contracted)
        shared = [x for axis in out[:-2] for x in axis if x in passthrough]
        return Linearization([Piece(
            arg=v, factors=[Factor(weights, f_axes)], passthrough=passthrough,
            split=split_info(shared, tuple(In(x) for x in contracted), ctx.table))])
