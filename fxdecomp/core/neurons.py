"""Where a branch can be split per hidden unit: the input axis of its last weighted layer.

An MLP branch ``fc2(act(fc1(x)))`` ends, from its leaf (the activation, or a GLU's product) to
the stream, in ops the walk carried terms through, so its value is linear in the leaf and in
every value after it. The input axis of the last op there that contracts an axis with a
weight (``fc2``'s input features, a 1x1 convolution's input channels) indexes the branch's
hidden units: keeping that axis free gives one exact component per unit (its activation,
through any frozen norm between, times its column of the weight). A GLU's product is the
leaf, so each unit keeps its gate and value together. The weighted op is found by asking its
rule for its linear map (a factor from a parameter with input-side atoms), not from a table
of ops.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx

from .atoms import In
from .context import RuleContext
from .ir import PARAM, ComponentSpec, is_varying
from .state import CompileState
from .terms import NodeValue


@dataclass(frozen=True)
class NeuronAxis:
    """A branch's hidden-unit atoms (row-major), or why it has none (``atoms`` empty)."""

    atoms: tuple = ()
    layer_node: fx.Node | None = None
    why: str = ""


def tail(state: CompileState, spec: ComponentSpec) -> list:
    """The branch's ops after its leaf (after the product that defines a GLU's leaf), up to the
    stream or the first op where another varying value joins it (a parallel branch), in
    forward order."""
    start = spec.mixing if spec.mixing is not None else spec.leaf
    graph, stream = state.stream.graph, state.stream
    seen, todo = {start}, [start]
    while todo:
        for u in todo.pop().users:
            if u in seen or u not in graph or u in stream:
                continue
            if any(is_varying(state.flow, a) and a not in seen for a in u.all_input_nodes):
                continue
            seen.add(u)
            todo.append(u)
    order = {n: i for i, n in enumerate(start.graph.nodes)}
    return sorted(seen, key=order.__getitem__)


def contracted_by_weight(state: CompileState, ctx: RuleContext, node: fx.Node, inputs: set) -> tuple:
    """Atoms of one of ``inputs`` that ``node`` sums over with a parameter (its input features)."""
    rule = state.affinity.rule(node)
    if rule is None or node.op != "call_function" or not state.route.through.get(node):
        return ()
    lin = rule.linearize(node, ctx, state.route.carried.get(node))
    for piece in lin.pieces:
        if piece.arg is None or piece.arg not in inputs:
            continue
        for f in piece.factors:
            if not (isinstance(f.source, NodeValue) and state.flow.get(f.source.node) == PARAM):
                continue
            ins = tuple(x.atom for axis in f.axes for x in axis if isinstance(x, In))
            ins = tuple(a for a in ins if a not in piece.passthrough)
            if ins:
                return ins
    return ()


def neuron_axis(state: CompileState, spec: ComponentSpec, terms: list, ctx: RuleContext) -> NeuronAxis:
    """The hidden-unit atoms of one branch, checked to be free in every one of its terms."""
    if spec.category != "branch" or spec.leaf is None:
        return NeuronAxis(why="it is not a branch")
    nodes = tail(state, spec)
    inside = set(nodes)
    found, layer = (), None
    for node in nodes:
        ins = contracted_by_weight(state, ctx, node, inside)
        if ins:
            found, layer = ins, node
    if not found:
        return NeuronAxis(why="no weighted layer follows its leaf (its nonlinearity, or its output where it is affine)")
    table = state.axes.table
    roles = {table.find(a).role for a in found}
    if roles - {"channel", "other"}:
        return NeuronAxis(why=f"the input axis of its last layer ({layer.name}) indexes {sorted(roles)}, not units")
    for t in terms:
        if not set(found) <= t.atom_set:
            return NeuronAxis(why=f"the input axis of its last layer ({layer.name}) is summed in one of its terms")
    return NeuronAxis(tuple(found), layer)
