"""Which components carry a spurious attribute: by words (the method), by chance, and by the truth.

* ``spurious_scores``: the paper's ranking, a component's property score for the
  spurious attribute's descriptions minus its score for the label's descriptions.
* ``random_rankings``: the baseline of as many random components.
* ``readout_ranking``: the oracle, components by their exact direct effect on a
  linear readout of the spurious attribute (needs its labels; not a method).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..align.probes import readout_effects
from ..align.scores import property_scores
from ..errors import InputError


def spurious_scores(aligned, spurious: Sequence[str], label: Sequence[str] = (), *, clip=None,
                    text_embeddings: tuple[torch.Tensor, torch.Tensor | None] | None = None,
                    method: str | None = None) -> dict[str, float]:
    """{component: score(spurious descriptions) − score(label descriptions)} (no ``label``: just the first).

    ``text_embeddings``: optional (spurious [k, d], label [m, d]) embeddings instead of ``clip``.
    """
    if not spurious:
        raise InputError("describe the spurious attribute with at least one description (e.g. the background's "
                         "place names)")
    t_sp, t_lab = text_embeddings if text_embeddings is not None else (None, None)
    kw = {} if method is None else {"method": method}
    sp = property_scores(aligned, list(spurious), clip=clip, text_embeddings=t_sp, **kw)
    if not label:
        return sp
    lab = property_scores(aligned, list(label), clip=clip, text_embeddings=t_lab, **kw)
    return {n: sp[n] - lab[n] for n in sp}


def ranked(scores: dict[str, float], candidates: Sequence[str] | None = None) -> list[str]:
    """Component names, highest score first (stable), among ``candidates`` if given."""
    names = list(scores) if candidates is None else [n for n in scores if n in set(candidates)]
    return sorted(names, key=lambda n: -scores[n])


def random_rankings(candidates: Sequence[str], draws: int = 20, seed: int = 0) -> list[list[str]]:
    """``draws`` random orders of the candidates (seeded)."""
    rng = np.random.default_rng(seed)
    return [[candidates[i] for i in rng.permutation(len(candidates))] for _ in range(draws)]


def readout_ranking(train: torch.Tensor, train_labels, held_out: torch.Tensor, held_out_labels,
                    names: Sequence[str], candidates: Sequence[str] | None = None) -> list[str]:
    """Components by their exact effect on a linear probe of the spurious attribute (``readout_effects``),
    largest first: the oracle ordering."""
    effects = readout_effects(train, train_labels, held_out, held_out_labels)
    return ranked(dict(zip(names, effects.tolist())), candidates)
