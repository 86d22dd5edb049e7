"""Ranking a run's components by a property: every score reads the run's shared map.

The per-component maps are free to rotate what several components encode redundantly, and that
rotation breaks a ranking (docs/ALIGN.md: 3-5 of 14 rows sound against the readout ground truth,
12 of 14 through one map for every component). So rankings over a run read
``run_shared_aligner(run)``; descriptions read ``run_aligner(run)``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..store.run import Run
from .aligned import Aligned
from .runs import run_clip_space, run_shared_aligner
from .scores import property_scores


def shared_aligned(run: Run, images: Sequence[int] | None = None) -> Aligned:
    """The run's components (of every image, or of ``images``) through its shared map, mapped shard by
    shard; refuses a run aligned without a shared map (``fxdecomp align RUN --shared-only`` adds it)."""
    shared = run_shared_aligner(run)
    if images is None:
        parts = [shared.map(block).mapped for _, _, block in run.shards()]
        mapped = torch.cat(parts) if parts else torch.zeros(0, len(run.components), shared.d_clip)
    else:
        mapped = shared.map(run.images(np.asarray(images))).mapped
    return Aligned(mapped, list(shared.names), None, shared.bias.detach().float().cpu())


def property_scores_over(run: Run, properties: Mapping[str, Sequence[str]], *, clip=None,
                         images: Sequence[int] | None = None,
                         aligned: Aligned | None = None) -> dict[str, dict[str, float]]:
    """{property: {component: variance share}} over the run's images, through its shared map.

    ``clip``: the run's CLIP space (default: ``run_clip_space(run)``); ``aligned``: ``shared_aligned(run)``
    when already computed."""
    clip = run_clip_space(run) if clip is None else clip
    aligned = shared_aligned(run, images) if aligned is None else aligned
    return {p: property_scores(aligned, list(words), clip=clip, method="share") for p, words in properties.items()}
