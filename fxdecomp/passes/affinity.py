"""Pass 6: how each node inside a segment depends on the segment's start.

* ``step``: how the walk treats the node, a :class:`~fxdecomp.core.step.Step` —
  ``LINEAR``, ``MIXING`` (linear in one operand once the others are frozen: products,
  attention), ``NORM`` (affine once its statistics are frozen), ``NONLINEAR`` or
  ``UNKNOWN`` (no rule). Op rules answer one op
  at a time; a run of pointwise ops they cannot walk through is answered from its
  symbolic form (``passes/symbolic.py``), whose rule then stands in for the op's.
* ``affine``: the node is an affine function of the stream node that starts its
  segment (a skip path). Norms off the stream count as nonlinear here.
* ``depth``: how many nonlinear steps separate it from the stream; when a
  product has two varying operands, the shallower one is carried (the values,
  not the attention weights; the stream, not the gate).
* ``frozen_affine``: affine once norms are frozen too (linear ops and norms back to the
  stream): a residual branch like this is still a component, never walked through.
* ``linear_reach``: the node reaches the segment's end through linear ops only
  (a norm on such a path is on the stream, not at the start of a branch).
* ``selections``: the nodes whose rule says ``SELECTION`` (a max over an axis): ``LINEAR``
  with ``linearize=True`` (their selection frozen), else ``NONLINEAR``.
"""
from __future__ import annotations

import torch.fx as fx

from ..core.ir import Affinity, Axes, Stream, is_varying
from ..core.state import CompileState
from ..core.step import Step
from ..rules.registry import rule_for
from .symbolic import pointwise_rules


def step_of(node: fx.Node, flow: dict, rule=None) -> Step:
    """The step of a varying node as its rule gives it (``UNKNOWN`` where no rule covers it)."""
    if node.op != "call_function":
        return Step.UNKNOWN
    rule = rule or rule_for(node.target)
    if rule is None:
        return Step.UNKNOWN
    return rule.classify(node, lambda x: is_varying(flow, x))


def run(state: CompileState) -> CompileState:
    """Fills ``affinity``."""
    state.affinity = analyse(state.gm, state.flow, state.stream, state.axes, state.linearize)
    return state


def analyse(gm: fx.GraphModule, flow: dict, stream: Stream, axes: Axes, linearize: bool = False) -> Affinity:
    g = stream.graph
    order = [n for n in gm.graph.nodes if n in g]
    aff = _analyse(order, flow, stream, Affinity({}, {}, {}, {}, {}), linearize)
    symbolic = pointwise_rules(order, flow, stream, lambda n: aff.step[n], aff.depth, axes.atoms)
    if symbolic:
        aff = _analyse(order, flow, stream, Affinity({}, {}, {}, {}, {}, symbolic=symbolic), linearize)
    aff.rules = {n: symbolic.get(n) or rule_for(n.target) for n in gm.graph.nodes if n.op == "call_function"}
    return aff


def _analyse(order: list, flow: dict, stream: Stream, aff: Affinity, linearize: bool) -> Affinity:
    g = stream.graph
    affine, depth, step, frozen = aff.affine, aff.depth, aff.step, aff.frozen_affine

    def step_here(node) -> Step:
        if node in stream and node.op != "call_function":
            return Step.INPUT
        k = step_of(node, flow, aff.symbolic.get(node))
        if k is Step.SELECTION:
            aff.selections.add(node)
            k = Step.LINEAR if linearize else Step.NONLINEAR
        return k

    users: dict = {n: [] for n in order}
    for node in order:
        if node in stream:
            affine[node], depth[node], frozen[node] = True, 0, True
            step[node] = step_here(node)
        else:
            k = step_here(node)
            step[node] = k
            args = [a for a in aff.inputs(node) if a in g]
            base = [affine[a] for a in args]
            d = max((depth[a] for a in args), default=0)
            frozen[node] = k in (Step.LINEAR, Step.NORM) and all(frozen[a] for a in args)
            if k == Step.LINEAR:
                affine[node], depth[node] = all(base), d
            else:
                affine[node], depth[node] = False, d + 1
        for a in aff.inputs(node):
            if a in users:
                users[a].append(node)
    reach = aff.linear_reach
    for node in reversed(order):
        if node in stream:
            reach[node] = True
            continue
        reach[node] = any(step.get(u) in (Step.LINEAR, Step.NORM) and (u in stream or reach[u]) for u in users[node])
    return aff
