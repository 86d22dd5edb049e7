"""A node's concrete shape and dtype, as the shapes pass recorded them (torch.fx's ShapeProp
``tensor_meta``)."""
from __future__ import annotations

import torch
import torch.fx as fx
from torch.fx.passes.shape_prop import TensorMetadata


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
