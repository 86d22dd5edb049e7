"""CUDA-graph replay of the decomposing forward, for small batches.

At batch 1-8 the decomposing forward is bound by kernel launches (a few hundred small einsums and
the Python between them), not by arithmetic. A CUDA graph records the whole forward once per batch
shape and replays it with one launch. The shapes are fixed by the compiled module, so a graph per
batch size is all it takes; each keeps its own static input and output buffers.
"""
from __future__ import annotations

import torch

from .errors import InputError


class GraphedForward:
    """Calls ``forward(images) -> tuple of tensors`` through one captured CUDA graph per
    (shape, dtype, device) of ``images``; returns fresh copies of the outputs."""

    def __init__(self, forward, warmup: int = 2):
        self.forward = forward
        self.warmup = warmup
        self.graphs: dict = {}
        self._addresses: tuple | None = None

    def __call__(self, images: torch.Tensor) -> tuple:
        check_replayable(images)
        addresses = self._memory()
        if addresses != self._addresses:  # a weight got new memory (``w.data = ...``): graphs read the old one
            self.graphs.clear()
            self._addresses = addresses
        key = (tuple(images.shape), images.dtype, images.device)
        entry = self.graphs.get(key)
        if entry is None:
            entry = self.graphs[key] = self._capture(images)
        graph, static_in, static_out = entry
        static_in.copy_(images)
        graph.replay()
        return tuple(t.clone() for t in static_out)

    def _memory(self) -> tuple:
        """Where every parameter and buffer of the forward lives: what a captured graph reads."""
        module = self.forward if isinstance(self.forward, torch.nn.Module) else None
        if module is None:
            return ()
        return tuple(t.data_ptr() for t in (*module.parameters(), *module.buffers()))

    def _capture(self, images: torch.Tensor):
        with torch.inference_mode(False):  # a normal tensor: later calls may copy into it outside inference mode
            static_in = images.clone()
        side = torch.cuda.Stream(device=images.device)
        side.wait_stream(torch.cuda.current_stream(images.device))
        with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
            for _ in range(self.warmup):
                self.forward(static_in)
        torch.cuda.current_stream(images.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = tuple(self.forward(static_in))
        return graph, static_in, static_out


def check_replayable(images: torch.Tensor) -> None:
    """Graphs replay recorded kernels: only for CUDA images, and only for inference."""
    if images.device.type != "cuda":
        raise InputError(f"CUDA graphs replay on a CUDA device, but the images are on {images.device}; move the "
                         "module and images with dm.cuda() and images.cuda(), or turn graphs off with "
                         "dm.cuda_graphs(False)")
    if torch.is_grad_enabled():
        raise InputError("CUDA-graph replay is for inference: call dm(images) under torch.no_grad() or "
                         "torch.inference_mode(), or turn graphs off with dm.cuda_graphs(False)")
