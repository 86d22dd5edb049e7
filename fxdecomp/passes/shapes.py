"""Pass 2: record every node's concrete shape and dtype on an example batch.

Shapes are what atoms are made from; the batch size of the example stands in
for the dynamic batch (only its position matters, never its value).
"""
from __future__ import annotations

import torch
import torch.fx as fx
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from ..core.state import CompileState


def run(state: CompileState) -> CompileState:
    """Annotates every node of ``gm`` with ``tensor_meta`` (torch.fx's ShapeProp convention)."""
    propagate(state.gm, state.example)
    return state


def propagate(gm: fx.GraphModule, example: torch.Tensor) -> torch.Tensor:
    """Annotate ``node.meta['tensor_meta']``; returns the graph's output on ``example``."""
    with torch.no_grad():
        out = ShapeProp(gm).propagate(example)
    return out


def shape_of(node) -> tuple | None:
    """Concrete shape of a tensor-valued node (None for non-tensors and tuples)."""
    if not isinstance(node, fx.Node):
        return None
    tm = node.meta.get("tensor_meta")
    if isinstance(tm, TensorMetadata):
        return tuple(int(s) for s in tm.shape)
    return None


def item_shapes(node) -> list | None:
    """Shapes of the items of a tuple-valued node."""
    tm = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    if isinstance(tm, (list, tuple)):
        return [tuple(int(s) for s in t.shape) if isinstance(t, TensorMetadata) else None for t in tm]
    return None


def dtype_of(node) -> torch.dtype | None:
    tm = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tm.dtype if isinstance(tm, TensorMetadata) else None
