"""Pass 6: how each node inside a segment depends on the segment's start.

* ``step``: how the walk treats the node — ``linear``, ``mixing`` (linear in one
  operand once the others are frozen: products, attention), ``norm`` (affine once its
  statistics are frozen), ``nonlinear`` or ``unknown`` (no rule). Op rules answer one op
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
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch.fx as fx

from ..rules.registry import rule_for
from .dataflow import is_varying
from .stream import Stream
from .symbolic import pointwise_rules


def step_of(node: fx.Node, flow: dict, rule=None) -> str:
    """``linear``, ``mixing``, ``norm``, ``nonlinear`` or ``unknown`` for a varying node."""
    if node.op != "call_function":
        return "unknown"
    rule = rule or rule_for(node.target)
    if rule is None:
        return "unknown"
    return rule.classify(node, lambda x: is_varying(flow, x))


@dataclass
class Affinity:
    affine: dict
    depth: dict
    linear_reach: dict
    step: dict
    frozen_affine: dict
    #: rules read from the symbolic form, standing in for the op rules at these nodes
    rules: dict = field(default_factory=dict)

    def rule(self, node: fx.Node):
        """The rule the walk uses at ``node``."""
        hit = self.rules.get(node)
        return hit if hit is not None else rule_for(node.target)

    def inputs(self, node: fx.Node) -> list:
        """The values ``node`` is a function of, for the walk: its operands, or for a node
        answered symbolically, the values that enter its run of pointwise ops."""
        hit = self.rules.get(node)
        return hit.inputs() if hit is not None else list(node.all_input_nodes)


def analyse(gm: fx.GraphModule, flow: dict, stream: Stream) -> Affinity:
    g = stream.graph
    order = [n for n in gm.graph.nodes if n in g]
    first = _analyse(order, flow, stream, Affinity({}, {}, {}, {}, {}))

    def atoms(n):
        return tuple(a for axis in n.meta["fxd_atoms"] for a in axis)

    rules = pointwise_rules(order, flow, stream, lambda n: first.step[n], first.depth, atoms)
    if not rules:
        return first
    return _analyse(order, flow, stream, Affinity({}, {}, {}, {}, {}, rules))


def _analyse(order: list, flow: dict, stream: Stream, aff: Affinity) -> Affinity:
    g = stream.graph
    affine, depth, step, frozen = aff.affine, aff.depth, aff.step, aff.frozen_affine
    users: dict = {n: [] for n in order}
    for node in order:
        if node in stream:
            affine[node], depth[node], frozen[node] = True, 0, True
            step[node] = step_of(node, flow, aff.rules.get(node)) if node.op == "call_function" else "input"
        else:
            k = step_of(node, flow, aff.rules.get(node))
            step[node] = k
            args = [a for a in aff.inputs(node) if a in g]
            base = [affine[a] for a in args]
            d = max((depth[a] for a in args), default=0)
            frozen[node] = k in ("linear", "norm") and all(frozen[a] for a in args)
            if k == "linear":
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
        reach[node] = any(step.get(u) in ("linear", "norm") and (u in stream or reach[u]) for u in users[node])
    return aff
