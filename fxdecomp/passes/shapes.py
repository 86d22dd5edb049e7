"""Pass 2: record every node's concrete shape and dtype on an example batch.

Shapes are what atoms are made from; the batch size of the example stands in
for the dynamic batch (only its position matters, never its value).
"""
from __future__ import annotations

import torch
import torch.fx as fx
from torch.fx.passes.shape_prop import ShapeProp

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
