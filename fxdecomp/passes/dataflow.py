"""Pass 3: which values depend on the image, which are constants, which are shapes.

Only values that depend on the image's *values* can carry components. Shape
arithmetic (``sym_size`` of the batch, products of sizes) and everything
computed from parameters alone are constants of the forward. The map from node
to class is called ``flow`` throughout the passes.
"""
from __future__ import annotations

import torch
import torch.fx as fx

from ..core.ir import CONST, INPUT, PARAM, SHAPE, VARYING
from ..core.state import CompileState
from ..errors import TraceError


def run(state: CompileState) -> CompileState:
    """Fills ``flow`` and ``inp``."""
    state.flow, state.inp = classify_values(state.gm)
    return state


def classify_values(gm: fx.GraphModule) -> tuple[dict, fx.Node]:
    """``flow``: each node's value class (INPUT/PARAM/CONST/SHAPE/VARYING); also the input node."""
    flow: dict[fx.Node, str] = {}
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise TraceError(f"the traced model takes {len(placeholders)} inputs; decompose() needs a model "
                         "whose forward takes one image batch")
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            flow[node] = INPUT
        elif node.op == "get_attr":
            flow[node] = PARAM
        elif node.op in ("call_function", "call_method", "call_module"):
            meta = node.meta.get("tensor_meta")
            if meta is None:
                flow[node] = SHAPE
                continue
            args = [a for a in node.all_input_nodes if reads_values(node, a)]
            moving = any(flow.get(a) in (INPUT, VARYING) for a in args)
            flow[node] = VARYING if moving else CONST
    return flow, placeholders[0]


#: ops whose output does not depend on their tensor arguments' values (only on shapes)
VALUE_FREE = {torch.ops.aten.zeros_like.default, torch.ops.aten.ones_like.default,
              torch.ops.aten.empty_like.default, torch.ops.aten.full_like.default,
              torch.ops.aten.new_zeros.default, torch.ops.aten.new_ones.default,
              torch.ops.aten.new_empty.default, torch.ops.aten.new_full.default}

#: ops whose argument at this position gives only a shape or dtype, never values
SHAPE_ONLY = {torch.ops.aten.reshape_as.default: 1, torch.ops.aten.view_as.default: 1,
              torch.ops.aten.expand_as.default: 1, torch.ops.aten.type_as.default: 1}


def reads_values(user: fx.Node, node: fx.Node) -> bool:
    """Whether ``user`` reads ``node``'s values, not just its shape (``x.reshape_as(node)``,
    ``torch.zeros_like(node)``): a shape-only use is no data path (``w.expand_as(x)`` is a
    constant), so it cannot take a node off the stream either."""
    if user.target in VALUE_FREE:
        return False
    skip = SHAPE_ONLY.get(user.target)
    if skip is None:
        return True
    return any(a is node for i, a in enumerate(user.args) if i != skip) or node in user.kwargs.values()
