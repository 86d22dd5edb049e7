"""Pass 3: which values depend on the image, which are constants, which are shapes.

Only values that depend on the image's *values* can carry components. Shape
arithmetic (``sym_size`` of the batch, products of sizes) and everything
computed from parameters alone are constants of the forward.
"""
from __future__ import annotations

import torch.fx as fx

from ..errors import TraceError

INPUT, PARAM, CONST, SHAPE, VARYING = "input", "param", "const", "shape", "varying"


def classify_values(gm: fx.GraphModule) -> tuple[dict, fx.Node]:
    """Map each node to INPUT/PARAM/CONST/SHAPE/VARYING; also return the input node."""
    kinds: dict[fx.Node, str] = {}
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise TraceError(f"the traced model takes {len(placeholders)} inputs; decompose() needs a model "
                         "whose forward takes one image batch")
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            kinds[node] = INPUT
        elif node.op == "get_attr":
            kinds[node] = PARAM
        elif node.op in ("call_function", "call_method", "call_module"):
            meta = node.meta.get("tensor_meta")
            if meta is None:
                kinds[node] = SHAPE
                continue
            args = node.all_input_nodes
            moving = any(kinds.get(a) in (INPUT, VARYING) for a in args)
            kinds[node] = VARYING if moving else CONST
    return kinds, placeholders[0]


def is_varying(kinds: dict, x) -> bool:
    return isinstance(x, fx.Node) and kinds.get(x) in (INPUT, VARYING)
