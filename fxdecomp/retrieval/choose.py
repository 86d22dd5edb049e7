"""Which components to search with: those that carry a property, or one description.

* ``property_components``: by score for the property, or with the paper's rule,
  score_f − max(0, max_{g≠f} score_g): components that score high for property f and not for the
  other properties.
* ``description_components``: components by their share of the representation's variance
  along one description's text direction (centred against the other descriptions of its
  property, so the direction is what tells this description apart from them).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..align.aligned import Aligned
from ..errors import InputError


def property_components(scores: Mapping[str, Mapping[str, float]], prop: str, k: int = 5,
                        candidates: Sequence[str] | None = None, exclusive: bool = True) -> list[str]:
    """The k components that carry ``prop`` most (and, ``exclusive``, the other properties least).

    ``scores``: {property: {component: score}} for every property considered (at least ``prop``).
    With ``exclusive`` (the paper's rule) a component is ranked by its score for ``prop`` minus its
    best score elsewhere; without, by its score for ``prop`` alone, which keeps components that
    carry ``prop`` together with another property (an MLP writing both a pattern and a colour).
    """
    if prop not in scores:
        raise InputError(f"no scores for property {prop!r}; scored: {sorted(scores)}")
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    names = list(scores[prop]) if candidates is None else list(candidates)
    others = [p for p in scores if p != prop]

    def rule(n):
        if not exclusive:
            return scores[prop][n]
        return scores[prop][n] - max(0.0, max((scores[g][n] for g in others), default=0.0))

    return sorted(names, key=lambda n: -rule(n))[:k]


def text_direction_against(texts: torch.Tensor, which: int) -> torch.Tensor:
    """[d] unit direction of description ``which`` minus the mean of all ``texts`` [k, d] (k ≥ 2),
    or the description itself when it is alone."""
    t = texts.double()
    d = t[which] - t.mean(0) if len(t) > 1 else t[which]
    return torch.nn.functional.normalize(d, dim=0)


def description_components(aligned: Aligned, direction: torch.Tensor, k: int = 5,
                           candidates: Sequence[str] | None = None) -> list[str]:
    """The k components with the largest share of the variance of the aligned representation along
    ``direction`` [d]: Cov(s_i, Σ_j s_j) / Var(Σ_j s_j) with s_i = ⟨f_i(c_i(x)), direction⟩."""
    if not isinstance(aligned, Aligned):
        raise InputError("components are chosen from Aligned contributions: aligner.map(features)")
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    s = aligned.mapped.double() @ direction.double().to(aligned.mapped.device)  # [N, C]
    s = s - s.mean(0)
    total = s.sum(1)
    share = (s * total.unsqueeze(1)).mean(0) / total.pow(2).mean().clamp_min(1e-300)
    allowed = set(candidates) if candidates is not None else None
    order = [aligned.names[int(i)] for i in torch.argsort(share, descending=True, stable=True)]
    return [n for n in order if allowed is None or n in allowed][:k]
