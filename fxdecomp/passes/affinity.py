"""Pass 5: how each node inside a segment depends on the segment's start.

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

from dataclasses import dataclass

import torch.fx as fx

from ..rules.registry import rule_for
from .dataflow import is_varying
from .stream import Stream


def node_kind(node: fx.Node, kinds: dict) -> str:
    """``linear``, ``mixing``, ``norm``, ``nonlinear`` or ``unknown`` for a varying node."""
    if node.op != "call_function":
        return "unknown"
    rule = rule_for(node.target)
    if rule is None:
        return "unknown"
    return rule.classify(node, lambda x: is_varying(kinds, x))


@dataclass
class Affinity:
    affine: dict
    depth: dict
    linear_reach: dict
    kind: dict
    frozen_affine: dict


def analyse(gm: fx.GraphModule, kinds: dict, stream: Stream) -> Affinity:
    g = stream.graph
    order = [n for n in gm.graph.nodes if n in g]
    affine, depth, kind, frozen = {}, {}, {}, {}
    for node in order:
        if node in stream:
            affine[node], depth[node], frozen[node] = True, 0, True
            kind[node] = node_kind(node, kinds) if node.op == "call_function" else "input"
            continue
        k = node_kind(node, kinds)
        kind[node] = k
        args = [a for a in node.all_input_nodes if a in g]
        base = [affine[a] for a in args]
        d = max((depth[a] for a in args), default=0)
        frozen[node] = k in ("linear", "norm") and all(frozen[a] for a in args)
        if k == "linear":
            affine[node], depth[node] = all(base), d
        else:
            affine[node], depth[node] = False, d + 1
    reach: dict = {}
    for node in reversed(order):
        if node in stream:
            reach[node] = True
            continue
        reach[node] = any(kind.get(u) in ("linear", "norm") and (u in stream or reach[u])
                          for u in node.users if u in g)
    return Affinity(affine, depth, reach, kind, frozen)
