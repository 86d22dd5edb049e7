"""Pass 2: record every node's concrete shape and dtype on an example batch.

Shapes are what atoms are made from; the batch size of the example stands in
for the dynamic batch (only its position matters, never its value). The graph
runs on fake tensors (``core.fake_run``): shapes without arithmetic, which on a
large tower is most of what running it would cost. Where fake execution fails
(an op without a fake kernel, a value-dependent shape) it runs for real: the
same metadata, slower.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
from torch.fx.node import map_aggregate
from torch.fx.passes.shape_prop import _extract_tensor_metadata

from ..core.fake_run import fake_call
from ..core.state import CompileState


def run(state: CompileState) -> CompileState:
    """Annotates every node of ``gm`` with ``tensor_meta`` (torch.fx's ShapeProp convention)."""
    propagate(state.gm, state.example)
    return state


class ShapeRecorder(fx.Interpreter):
    """torch.fx's ShapeProp, on whatever tensors it is given (fake or real), without its own
    error printing: a failure under fake tensors is expected and answered by a real run."""

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        found = False

        def meta(obj):
            nonlocal found
            if isinstance(obj, torch.Tensor):
                found = True
                return _extract_tensor_metadata(obj)
            return obj

        recorded = map_aggregate(result, meta)
        if found:
            n.meta["tensor_meta"] = recorded
        return result


def propagate(gm: fx.GraphModule, example: torch.Tensor, fake: bool = True) -> bool:
    """Annotate ``node.meta['tensor_meta']``; True when fake tensors sufficed (``fake=False``
    runs the graph for real)."""
    if fake and fake_call(gm, ShapeRecorder(gm).run, example)[0]:
        return True
    for n in gm.graph.nodes:  # nothing half-recorded from the fake attempt
        n.meta.pop("tensor_meta", None)
    with torch.no_grad():
        ShapeRecorder(gm).run(example)
    return False
