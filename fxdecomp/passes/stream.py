"""Pass 5: find the residual stream.

The stream is the chain of nodes that every path from the image to the output
passes through: the output's post-dominators (networkx computes them as the
dominators of the reversed graph). Between two consecutive stream nodes lies a
*segment*: a single op on the stream, a residual join (skip plus branches), or
a nonlinear stretch.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import torch.fx as fx

from ..errors import TraceError
from .dataflow import is_varying, reads_values


@dataclass
class Stream:
    nodes: list                      # stream nodes, input first, output last
    index: dict                      # stream node -> position
    segment: dict = field(default_factory=dict)  # varying node -> index of the stream node starting its segment
    graph: nx.DiGraph | None = None  # varying nodes that reach the output

    def __contains__(self, node) -> bool:
        return node in self.index


def output_node(gm: fx.GraphModule) -> fx.Node:
    out = next(n for n in gm.graph.nodes if n.op == "output")
    val = out.args[0]
    while isinstance(val, (tuple, list)):
        if len(val) != 1:
            raise TraceError(f"the model returns {len(val)} values; decompose() needs a model that returns "
                             "one tensor (wrap it to return the representation you want decomposed)")
        val = val[0]
    if isinstance(val, dict) or not isinstance(val, fx.Node):
        raise TraceError("the model's output is not a tensor; wrap the model to return one tensor")
    return val


def find_stream(gm: fx.GraphModule, flow: dict, inp: fx.Node) -> Stream:
    out = output_node(gm)
    g = nx.DiGraph()
    for node in gm.graph.nodes:
        if is_varying(flow, node):
            g.add_node(node)
            for user in node.users:
                if is_varying(flow, user) and reads_values(user, node):
                    g.add_edge(node, user)
    if out not in g:
        raise TraceError("the model's output does not depend on its input image")
    live = nx.ancestors(g, out) | {out}
    g = g.subgraph(live).copy()
    if inp not in g:
        raise TraceError("the model's output does not depend on its input image")
    ipdom = nx.immediate_dominators(g.reverse(copy=False), out)
    chain = [inp]
    while chain[-1] is not out:
        chain.append(ipdom[chain[-1]])
    stream = Stream(chain, {n: i for i, n in enumerate(chain)}, graph=g)
    for node in gm.graph.nodes:
        if node not in g:
            continue
        if node in stream.index:
            stream.segment[node] = stream.index[node]
            continue
        starts = [stream.index[a] if a in stream.index else stream.segment[a]
                  for a in node.all_input_nodes if a in g]
        stream.segment[node] = max(starts)
    return stream
