"""Pass 7: the route of the expand pass's walk, decided before it walks.

For every node that reaches the output: whether the walk carries its inputs' terms *through*
it (a linear op; a norm or a product frozen where it is part of the stream or of a readout;
a nonlinearity on the stream written as a frozen gate) or stops there, its value then a
leaf (of a branch, of the embedding, of a collapsed component); and for a product of two
varying operands, which one it carries. The demand pass follows these edges, the expand pass
walks them, so both take the same route.

* A norm is walked through on the stream, or where what enters it is not the stream itself
  (an affine path back to it) unless it reaches the segment's end through linear ops only.
* A product is walked through on the stream, or where its carried operand reads the stream
  through linear ops only and the product is not inside a residual branch (an attention
  pooling with a learned query is a readout).
* Of several varying operands, the walk carries the shallowest (the values, not the attention
  weights; the stream, not the gate): the others are frozen.
* A nonlinear op on the stream is the embedding when only the stream's own ops come before
  it (a CNN stem); with ``linearize`` an elementwise one is walked through as a frozen gate.
"""
from __future__ import annotations

import networkx as nx
import torch
import torch.fx as fx

from ..core.ir import Route, is_varying
from ..core.shape import shape_of
from ..core.state import CompileState
from ..core.step import Step
from ..core.where import unsupported
from ..rules.movement import TupleRule

#: ops that join a residual branch back onto the stream
RESIDUAL_JOINS = (torch.ops.aten.add.Tensor, torch.ops.aten.sub.Tensor)


def run(state: CompileState) -> CompileState:
    """Fills ``route``."""
    route = Route({}, {}, {}, {})
    g = state.stream.graph
    order = [n for n in state.gm.graph.nodes if n in g]
    for node in reversed(order):  # the order the demand pass asks in
        if any(a in g for a in state.affinity.inputs(node)):
            route.through[node] = _through(state, route, node)
    state.route = route
    return state


def moving(state: CompileState, node) -> list:
    """The operands of ``node`` (as the walk reads it) that depend on the image."""
    return [a for a in state.affinity.inputs(node) if is_varying(state.flow, a)]


def _through(state: CompileState, route: Route, node: fx.Node) -> bool:
    """Whether the walk takes the terms of ``node``'s inputs through it (a superset is safe)."""
    if node.op != "call_function":
        return True
    rule = state.affinity.rule(node)
    if rule is None or isinstance(rule, TupleRule):
        return True  # unknown (the walk will refuse it), or a split whose items are walked
    step = state.affinity.step[node]
    if step == Step.LINEAR:
        return True
    if step == Step.NORM:
        return _norm_passes(state, node, rule)
    if step == Step.MIXING:
        carried = route.carried[node] = _choose_carried(state, node, rule)
        return _mixing_passes(state, node, carried)
    if node not in state.stream:
        return False
    route.stem[node] = _only_stream_before(state, node)
    if route.stem[node]:
        return False
    why_not = route.why_not[node] = _why_not_gateable(state, node)
    return state.linearize and why_not is None


def _norm_passes(state: CompileState, node, rule) -> bool:
    if node in state.stream:
        return True
    aff = state.affinity
    x = rule.carriable(node)[0]
    entering = x in state.stream or aff.affine.get(x, False)
    return not entering or aff.linear_reach.get(node, False)


def _mixing_passes(state: CompileState, node, carried) -> bool:
    """A frozen product the walk passes through: on the stream (an explicit norm, a
    gate), or reading the stream through linear ops only (an attention pooling with a
    learned query reads the stream directly: a readout, not a branch)."""
    if node in state.stream:
        return True
    return state.affinity.affine.get(carried, False) and not _in_residual_branch(state, node)


def _in_residual_branch(state: CompileState, node) -> bool:
    """``node``'s segment ends in a sum that a path avoiding ``node`` also reaches (the
    skip of ``x + f(x)``): it is a branch, even when it reads the stream through linear
    ops only (Swin V2's attention, whose norm comes after it). Walking through it would
    double every earlier component's terms at each block. A readout concatenated with
    other features is not a residual join."""
    stream = state.stream
    seg = stream.segment.get(node)
    if seg is None or seg + 1 >= len(stream.nodes):
        return False
    end = stream.nodes[seg + 1]
    if end.op != "call_function" or end.target not in RESIDUAL_JOINS:
        return False
    below = nx.descendants(stream.graph, node) | {node}
    return any(a not in below for a in stream.graph.predecessors(end))


def _choose_carried(state: CompileState, node, rule):
    options = [a for a in rule.carriable(node) if is_varying(state.flow, a)]
    if not options:
        raise unsupported(state.stream, node, "it is not linear in any of its varying operands")
    if len(options) == 1:
        return options[0]
    depth = state.affinity.depth
    best = min(depth.get(a, 0) for a in options)
    return [a for a in options if depth.get(a, 0) == best][-1]


def _only_stream_before(state: CompileState, node) -> bool:
    """Nothing but a chain of stream ops (a stem) computes ``node``'s input."""
    return all(a in state.stream for a in nx.ancestors(state.stream.graph, node))


def _why_not_gateable(state: CompileState, node) -> str | None:
    """Why ``node`` cannot be written ``x · (f(x)/x)``: it must have one varying operand whose
    shape and atoms its output keeps (None: it can)."""
    args = moving(state, node)
    if len(args) != 1:
        return f"it has {len(args)} operands that depend on the image"
    x = args[0]
    if shape_of(x) != shape_of(node):
        return f"its output's shape {list(shape_of(node) or ())} differs from its input's {list(shape_of(x) or ())}"
    if state.axes.atoms(x) != state.axes.atoms(node):
        return "its output's axes are not its input's"
    return None
