"""Ranking components by a property (a set of descriptions), and the CLIP-score baseline.

Both scores are correlations across images, so they depend on what the components
do, not on the order they are listed in; results are keyed by component name.
A component that does not vary (a constant) cannot correlate with anything and
scores 0 instead of NaN.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..errors import InputError
from .aligned import Aligned
from .text import text_matrix

#: A component whose spread along a direction is below this fraction of the reference spread
#: (the whole representation's, or CLIP's) counts as constant there.
REL_TOL = 1e-6


def correlation(a: torch.Tensor, b: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
    """Pearson correlation over images (dim 0) of ``a`` and ``b`` (broadcast over the rest); 0 where
    ``a`` or ``b`` is constant (std ≤ REL_TOL · ``ref``, default their own largest std)."""
    a = a - a.mean(0)
    b = b - b.mean(0)
    sa, sb = a.pow(2).mean(0).sqrt(), b.pow(2).mean(0).sqrt()
    cov = (a * b).mean(0)
    if ref is None:
        ref = torch.maximum(sa.max(), sb.max())
    ok = (sa > REL_TOL * ref) & (sb > REL_TOL * ref)
    return torch.where(ok, cov / (sa * sb).clamp_min(1e-300), torch.zeros_like(cov))


def _check(aligned: Aligned):
    if not isinstance(aligned, Aligned):
        raise InputError("scores take Aligned contributions: aligner.map(features)")


def property_scores(aligned: Aligned, descriptions: Sequence[str], *, clip=None,
                    text_embeddings: torch.Tensor | None = None) -> dict[str, float]:
    """The paper's property-relevance score of every component: {name: score}.

    B = orthonormal basis (QR) of the property's k text embeddings; for each basis
    direction b_j, score_i averages over j the correlation across images between the
    component's projection s_ij = ⟨f_i(c_i(x)), b_j⟩ and the whole aligned
    representation's t_j = ⟨Σ_i f_i(c_i(x)), b_j⟩.
    """
    _check(aligned)
    t = text_matrix(descriptions, clip, text_embeddings, aligned.dim)
    if len(t) > aligned.dim:
        raise InputError(f"{len(t)} descriptions span at most {aligned.dim} directions in a {aligned.dim}-d space")
    basis, _ = torch.linalg.qr(t.T)  # [d, k]
    s = aligned.mapped.double() @ basis  # [N, C, k]
    total = s.sum(1)  # [N, k]
    ref = total.std(0, correction=0).clamp_min(1e-300)  # per direction
    corr = correlation(s, total.unsqueeze(1), ref)  # [C, k]
    return dict(zip(aligned.names, corr.mean(1).tolist()))


def clip_scores(aligned: Aligned, descriptions: Sequence[str], *, clip=None,
                text_embeddings: torch.Tensor | None = None) -> dict[str, float]:
    """The CLIP-score baseline: {name: score}.

    For each description, the correlation across images between the component's reading
    ⟨f_i(c_i(x)), text⟩ and CLIP's own image-text score ⟨CLIP_image(x), text⟩, averaged
    over the descriptions. Needs ``aligned.clip`` (collect features with ``clip=``).
    """
    _check(aligned)
    if aligned.clip is None:
        raise InputError("clip_scores needs CLIP's own embeddings of the same images: collect the features with "
                         "clip=... and map them with aligner.map(features)")
    t = text_matrix(descriptions, clip, text_embeddings, aligned.dim)
    reading = aligned.mapped.double() @ t.T  # [N, C, k]
    score = aligned.clip.double() @ t.T  # [N, k]
    ref = reading.sum(1).std(0, correction=0).clamp_min(1e-300)
    corr = correlation(reading, score.unsqueeze(1), ref)
    return dict(zip(aligned.names, corr.mean(1).tolist()))


def rankdata(x) -> np.ndarray:
    """Ranks 1..n, tied values sharing the mean of their ranks."""
    x = np.asarray(x, dtype=np.float64).ravel()
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    start = np.cumsum(counts) - counts  # ranks before each distinct value
    return (start + (counts + 1) / 2.0)[inverse.ravel()]


def spearman(a: Mapping[str, float] | Sequence[float], b: Mapping[str, float] | Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson correlation of tie-averaged ranks).

    Two dicts are paired by key (they must have the same keys); two sequences by position.
    NaN when either side is constant (the correlation is undefined).
    """
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        if not (isinstance(a, Mapping) and isinstance(b, Mapping)):
            raise InputError("spearman() takes two dicts or two sequences")
        if set(a) != set(b):
            raise InputError(f"the two rankings cover different components ({len(a)} vs {len(b)}, "
                             f"e.g. {sorted(set(a) ^ set(b))[:3]})")
        keys = list(a)
        x, y = [a[k] for k in keys], [b[k] for k in keys]
    else:
        x, y = list(a), list(b)
    if len(x) != len(y):
        raise InputError(f"rankings of different lengths ({len(x)} and {len(y)})")
    if np.isnan(np.asarray(x, float)).any() or np.isnan(np.asarray(y, float)).any():
        raise InputError("spearman() got NaN scores")
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = np.sqrt((rx ** 2).sum() * (ry ** 2).sum())
    return float((rx * ry).sum() / denom) if denom > 0 else float("nan")
