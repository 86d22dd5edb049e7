"""Pass 5: find the residual stream.

The stream is the chain of nodes that every path from the image to the output
passes through: the output's post-dominators (networkx computes them as the
dominators of the reversed graph). Between two consecutive stream nodes lies a
*segment*: a single op on the stream, a residual join (skip plus branches), or
a nonlinear stretch.
"""
from __future__ import annotations

import networkx as nx
import torch.fx as fx

from ..core.ir import Stream, is_varying
from ..core.state import CompileState
from ..errors import TraceError
from .dataflow import reads_values


def run(state: CompileState) -> CompileState:
    """Fills ``out`` and ``stream``."""
    state.out = output_node(state.gm)
    state.stream = find_stream(state.gm, state.flow, state.inp)
    return state


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
