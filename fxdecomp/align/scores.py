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


#: Property scores: ``"paper"`` (the paper's mean correlation) and ``"share"`` (variance share).
SCORE_METHODS = ("paper", "share")


def text_basis(texts: torch.Tensor, center: bool = False) -> torch.Tensor:
    """[d, r] orthonormal basis of the span of the text embeddings [k, d] (centred over the
    descriptions first when ``center`` and k > 1), from an SVD: unlike Gram–Schmidt it does
    not depend on the order the descriptions are listed in."""
    t = texts.double()
    if center and len(t) > 1:
        t = t - t.mean(0)
    _, sv, vh = torch.linalg.svd(t, full_matrices=False)
    keep = sv > 1e-10 * sv.max().clamp_min(1e-300)
    return vh[keep].T


def property_scores(aligned: Aligned, descriptions: Sequence[str], *, clip=None,
                    text_embeddings: torch.Tensor | None = None, method: str = "share") -> dict[str, float]:
    """The property-relevance score of every component: {name: score}.

    With s_ij = ⟨f_i(c_i(x)), b_j⟩ the component's projection on basis direction b_j of the
    property's text embeddings and t_j = Σ_i s_ij the whole aligned representation's:

    * ``"paper"``: mean over j of Corr_x(s_ij, t_j), the paper's score, on an order-free (SVD)
      basis of the text embeddings' span instead of the paper's Gram–Schmidt (QR) one;
    * ``"share"``: Σ_j Cov_x(s_ij, t_j) / Σ_j Var_x(t_j) on a basis of the *centred* text
      embeddings (what tells the descriptions apart): the component's share of the
      representation's variance along the property. Shares add up to 1 over the components,
      so a tiny component cannot score high by correlating perfectly. The default: against the
      readout ground truth (docs/ALIGN.md) it ranks components by their effect on a probe better
      than the paper's score, and best of all on a shared-map aligner (``variant="shared"``).
    """
    _check(aligned)
    if method not in SCORE_METHODS:
        raise InputError(f"method must be one of {SCORE_METHODS}, got {method!r}")
    t = text_matrix(descriptions, clip, text_embeddings, aligned.dim)
    if len(t) > aligned.dim:
        raise InputError(f"{len(t)} descriptions span at most {aligned.dim} directions in a {aligned.dim}-d space")
    basis = text_basis(t, center=method == "share")  # [d, r]
    s = aligned.mapped.double() @ basis  # [N, C, r]
    total = s.sum(1)  # [N, r]
    if method == "share":
        sc, tc = s - s.mean(0), total - total.mean(0)
        var = tc.pow(2).mean(0).sum()
        if var <= 0:
            return dict.fromkeys(aligned.names, 0.0)
        return dict(zip(aligned.names, ((sc * tc.unsqueeze(1)).mean(0).sum(-1) / var).tolist()))
    ref = total.std(0, correction=0).clamp_min(1e-300)  # per direction
    corr = correlation(s, total.unsqueeze(1), ref)  # [C, r]
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
