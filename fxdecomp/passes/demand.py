"""Pass 8: which parts of each value the output actually reads.

Walking back from the output, every varying node gets, per axis, the set of
indices some later op reads (``None``: all of them), from each op's rule
(``Rule.reads``): ``select`` and ``slice`` narrow the demand, ``cat`` hands each
input only its own range, elementwise ops and norms (on their leading axes) pass it
on, anything else reads everything. The pass itself knows no op.
Only edges the expand pass walks (the route pass says which: linear ops, norms
it passes through, gated products on the stream) carry demand: a branch's leaf
reads its actual value, not its terms. A value — or one input of a ``cat`` — whose terms nothing reads
is *dead*: the expand pass gives it no terms. Without this, a class-token readout would drag every
patch token's path through the model's late stages (CaiT, XCiT class-attention
blocks write ``cat([cls, patches])`` again and again) and the number of terms
would double at each such place, only to be multiplied by zero at the end.
"""
from __future__ import annotations

import torch.fx as fx

from ..core.context import RuleContext
from ..core.ir import Demand, Stream
from ..core.shape import shape_of
from ..core.state import CompileState
from ..rules.base import ALL, full
from ..rules.registry import rule_for


def run(state: CompileState) -> CompileState:
    """Fills ``demand``."""
    state.demand = analyse_demand(state.gm, state.stream, state.out, state.route.through, state.affinity.inputs,
                                  RuleContext(state))
    return state


def analyse_demand(gm: fx.GraphModule, stream: Stream, out: fx.Node, through: dict, inputs,
                   ctx: RuleContext) -> Demand:
    """``through[user]``: whether the walk takes its inputs' terms through ``user`` (the route
    pass); ``inputs(node)``: the values the walk reads at ``node`` (its operands, unless a
    symbolic rule reads a whole run of pointwise ops there)."""
    g = stream.graph
    order = [n for n in gm.graph.nodes if n in g]
    need: dict = {}    # node -> tuple of per-axis index sets, or None when dead
    edges: dict = {}   # (user, arg) -> what the user reads of arg, or None
    readers: dict = {}  # arg -> users with an edge to it
    for node in reversed(order):
        if node is out:
            need[node] = full(shape_of(node))
        else:
            need[node] = _union([edges[(u, node)] for u in readers.get(node, ())], node)
        for arg in set(a for a in inputs(node) if a in g):
            if through[node]:
                edges[(node, arg)] = _reads(node, arg, need[node], ctx)
                readers.setdefault(arg, []).append(node)
    return Demand(need, edges)


def _union(reads: list, node):
    live = [r for r in reads if r is not None]
    if not live:
        return None
    shape = shape_of(node)
    if shape is None or any(len(r) != len(shape) for r in live):
        return full(shape)
    out = []
    for axis in zip(*live):
        if any(s is ALL for s in axis):
            out.append(ALL)
        else:
            out.append(frozenset().union(*axis))
    return tuple(out)


def _reads(user: fx.Node, arg: fx.Node, need, ctx: RuleContext):
    """What ``user`` reads of ``arg`` when ``need`` of ``user`` is read (None: nothing), as the
    op's rule says (``Rule.reads``). It is the op's own rule even where the walk reads a run
    of pointwise ops symbolically: the run's other values are read whole."""
    if need is None:
        return None
    shape = shape_of(arg)
    if shape is None or shape_of(user) is None or arg not in user.all_input_nodes:
        return full(shape)
    rule = rule_for(user.target) if user.op == "call_function" else None
    return full(shape) if rule is None else rule.reads(user, arg, need, ctx)
