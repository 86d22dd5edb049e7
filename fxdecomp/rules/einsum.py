"""``einsum``: a product of operands summed over letters, so linear in any one
operand with the others frozen. A letter shared by operands is one atom; the
carried operand's summed letters are where a branch may be split by source
token; letters it shares with a frozen operand and keeps are heads (as for
matmul), and so are non-spatial letters only the frozen operand brings (the
heads of multi-query attention, whose keys and values have none)."""
from __future__ import annotations

import torch

from ..core.atoms import In
from ..core.step import Step
from ..core.terms import Factor, Linearization, Piece
from .base import Rule
from .layers import split_info
from .registry import rules_for

aten = torch.ops.aten


def parse(equation: str, n_operands: int) -> tuple[list[str], str] | None:
    """(letters per operand, output letters); None for forms not handled (ellipsis, diagonals)."""
    eq = equation.replace(" ", "")
    if "." in eq:
        return None
    lhs, arrow, rhs = eq.partition("->")
    ins = lhs.split(",")
    if len(ins) != n_operands or any(len(set(t)) != len(t) for t in ins):
        return None
    if not arrow:
        counts = {c: sum(t.count(c) for t in ins) for c in set(lhs) - {","}}
        rhs = "".join(sorted(c for c, k in counts.items() if k == 1))
    return ins, rhs


def _not_spatial(ctx, axis) -> bool:
    return bool(axis) and all(ctx.table.find(a).role not in ("spatial", "batch") for a in axis)


@rules_for(aten.einsum)
class EinsumRule(Rule):
    step = Step.MIXING

    def carriable(self, node):
        return list(node.args[1])

    def axes(self, node, ctx):
        spec = parse(node.args[0], len(node.args[1]))
        if spec is None:
            return ctx.fresh(node)
        ins, rhs = spec
        letter: dict = {}
        for t, x in zip(ins, node.args[1]):
            for c, axis, size in zip(t, ctx.raw_axes(x), ctx.shape(x)):
                if size == 1:
                    continue
                if c in letter:
                    ctx.unify(letter[c], axis)
                else:
                    letter[c] = axis
        return [letter.get(c, ()) for c in rhs]

    def linearize(self, node, ctx, carried=None):
        equation, operands = node.args[0], list(node.args[1])
        spec = parse(equation, len(operands))
        if spec is None:
            raise ctx.unsupported(node, f"einsum {equation!r} uses an ellipsis or a repeated letter")
        ins, rhs = spec
        moving = [x for x in operands if ctx.varying(x)]
        carried = carried if len(moving) > 1 else moving[0]
        k = operands.index(carried)
        mine = set(ins[k])
        summed = [c for c in ins[k] if c not in rhs]
        if any(c not in rhs and c not in mine for t in ins for c in t):
            raise ctx.unsupported(node, f"einsum {equation!r} sums letters the carried operand does not have")
        c_axes = dict(zip(ins[k], ctx.axes(carried)))
        factors, shared = [], []
        for j, (t, x) in enumerate(zip(ins, operands)):
            if j == k:
                continue
            axes = []
            for c, axis in zip(t, ctx.axes(x)):
                axes.append(tuple(In(a) for a in axis) if c in summed else tuple(axis))
                if c in rhs and (c in mine or _not_spatial(ctx, axis)):
                    shared.extend(axis)  # kept by both, or a head the frozen operand adds (multi-query)
            src = ctx.value(x) if ctx.varying(x) else ctx.const_factor(x).source
            factors.append(Factor(src, tuple(axes)))
        for c in summed:  # summed over the carried operand alone
            if not any(c in t for j, t in enumerate(ins) if j != k):
                factors.extend(ctx.ones(a) for a in c_axes[c])
        contracted = tuple(a for c in summed for a in c_axes[c])
        passthrough = frozenset(ctx.atoms(carried)) - set(contracted)
        return Linearization([Piece(arg=carried, factors=factors, passthrough=passthrough,
                                    split=split_info(shared, tuple(In(a) for a in contracted), ctx.table))])
