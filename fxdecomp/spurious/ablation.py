"""Mean-ablation of components in an exact decomposition.

The output is Σ_i c_i(x). Replacing a set S of components by their means
changes the output by −Σ_{i∈S} (c_i(x) − c̄_i) and nothing else, so the edited
model is exactly the old one plus a constant: no approximation, and no cost at
inference (the constant folds into the classifier's bias).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import InputError


def component_means(contributions: torch.Tensor) -> torch.Tensor:
    """[C, *out]: every component's mean over images (take it from a training split)."""
    if contributions.dim() < 2 or len(contributions) == 0:
        raise InputError(f"need contributions [N, C, ...] of at least one image, got {list(contributions.shape)}")
    return contributions.double().mean(0)


def mean_ablate(contributions: torch.Tensor, means: torch.Tensor, indices: Sequence[int]) -> torch.Tensor:
    """[N, *out]: the output with the components ``indices`` replaced by their ``means``."""
    if contributions.shape[1:] != means.shape:
        raise InputError(f"means {list(means.shape)} do not fit contributions {list(contributions.shape)}: take them "
                         "from the same decomposition (same model, granularity and components)")
    idx = torch.as_tensor(list(indices), dtype=torch.long)
    out = contributions.double().sum(1)
    if len(idx):
        out = out - (contributions[:, idx].double() - means[idx].to(out)).sum(1)
    return out


