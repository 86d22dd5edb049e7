"""Retrieval over a gallery of images: by example image in a component subspace, or by text.

Image queries compare the summed aligned contributions of the chosen components by
cosine similarity, after removing the gallery's mean (a constant offset says nothing about
any image); text queries rank images by the dot product of those sums with a text direction.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..align.aligned import Aligned
from ..errors import InputError


def component_sum(aligned: Aligned, names: Sequence[str]) -> torch.Tensor:
    """[N, d]: Σ_{i ∈ names} f_i(c_i(x)) for every image."""
    if not names:
        raise InputError("choose at least one component to search with")
    idx = [aligned.index(n) for n in names]
    return aligned.mapped[:, idx].double().sum(1)


def nearest(vectors: torch.Tensor, queries: Sequence[int] | torch.Tensor, k: int = 10,
            gallery: torch.Tensor | None = None) -> torch.Tensor:
    """[Q, k] gallery indices of each query's k nearest neighbours by cosine similarity.

    Without ``gallery``, queries are rows of ``vectors`` and the gallery is ``vectors`` itself,
    each query left out of its own results; vectors are centred on the gallery's mean.
    """
    x = vectors.double()
    g = x if gallery is None else gallery.double()
    q_idx = torch.as_tensor(queries, dtype=torch.long)
    if len(g) - (gallery is None) < k:
        raise InputError(f"a gallery of {len(g)} images cannot give {k} neighbours per query")
    mean = g.mean(0)
    q = F.normalize(x[q_idx] - mean, dim=1)
    gn = F.normalize(g - mean, dim=1)
    sim = q @ gn.T
    if gallery is None:
        sim[torch.arange(len(q_idx)), q_idx] = -float("inf")
    return sim.topk(k, dim=1).indices


def by_text(vectors: torch.Tensor, direction: torch.Tensor, k: int = 10) -> torch.Tensor:
    """[k] indices of the images whose vectors [N, d] reach furthest along ``direction`` [d]."""
    if k > len(vectors):
        raise InputError(f"asked for {k} images from a gallery of {len(vectors)}")
    return (vectors.double() @ direction.double()).topk(k).indices


def precision_at_k(retrieved: torch.Tensor, query_labels, labels) -> float:
    """Mean fraction of retrieved images [Q, k] whose label equals their query's label."""
    labels = np.asarray(labels)
    got = labels[np.asarray(retrieved)]
    want = np.asarray(query_labels).reshape(-1, 1)
    return float((got == want).mean())


def top_images(aligned: Aligned, name: str, k: int = 8, direction: torch.Tensor | None = None) -> torch.Tensor:
    """[k] images a component says most about: furthest along ``direction`` (a text direction), or
    without one, with the largest centred contribution (furthest from the component's mean)."""
    x = aligned.component(name).double()
    if direction is not None:
        return by_text(x, direction, k)
    if k > len(x):
        raise InputError(f"asked for {k} images from a gallery of {len(x)}")
    return (x - x.mean(0)).norm(dim=1).topk(k).indices
