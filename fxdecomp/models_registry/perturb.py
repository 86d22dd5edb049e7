"""Random weights that hide nothing: for tests and benchmarks of exactness.

Freshly initialised models have biases of 0, norm weights of 1, zero-initialised
tokens and layer scales, and BatchNorm statistics of (0, 1); a decomposition
that mishandles any of those constants would still look exact on them.
"""
from __future__ import annotations

import torch


@torch.no_grad()
def perturb_(model: torch.nn.Module, scale: float = 0.02, seed: int = 0, *,
             bn_stats: bool = True) -> torch.nn.Module:
    """Add ``scale``-sized noise to every parameter and, with ``bn_stats``, draw BatchNorm
    running means (N(0, 0.1²)) and variances (U[0.5, 1.5]); in place, returns the model."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device) * scale)
    if bn_stats:
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
    return model
