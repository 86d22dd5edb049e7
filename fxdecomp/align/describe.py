"""Words for a component: which text directions its aligned contributions vary along.

A component's mapped contributions f_i(c_i(x)) form a cloud in CLIP space. What
it says about an image is how it moves through that cloud, so both methods work
on the contributions centred over images (a constant offset says nothing about
any image) and rank descriptions by variance along their text embeddings.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..errors import InputError
from .aligned import Aligned
from .text import text_matrix


def _prepare(aligned: Aligned, component, descriptions, clip, text_embeddings, center_texts):
    if not isinstance(aligned, Aligned):
        raise InputError("describe() takes Aligned contributions: aligner.map(features)")
    t = text_matrix(descriptions, clip, text_embeddings, aligned.dim)
    if center_texts and len(t) > 1:
        t = t - t.mean(0)
        norms = t.norm(dim=1, keepdim=True)
        t = torch.where(norms > 1e-12, t / norms.clamp_min(1e-300), torch.zeros_like(t))
    x = aligned.component(component).double()
    return x - x.mean(0), t, list(descriptions)


def describe(aligned: Aligned, component: str | int, descriptions: Sequence[str], k: int = 10, *, clip=None,
             text_embeddings: torch.Tensor | None = None, center_texts: bool = True) -> list[tuple[str, float]]:
    """The k descriptions whose text directions the component varies along most.

    Projects the component's centred mapped contributions onto every description's unit
    text embedding and ranks by the standard deviation over images of that projection
    (the paper's projection onto text embeddings). With ``center_texts`` the text
    embeddings are first centred over the vocabulary: the direction every description
    shares (the template's words) tells no description from another.
    Returns ``[(description, std), ...]``, best first.
    """
    x, t, names = _prepare(aligned, component, descriptions, clip, text_embeddings, center_texts)
    spread = (x @ t.T).pow(2).mean(0).sqrt()
    order = torch.argsort(spread, descending=True, stable=True)[:k]
    return [(names[int(i)], float(spread[i])) for i in order]


def textspan(aligned: Aligned, component: str | int, descriptions: Sequence[str], k: int = 10, *, clip=None,
             text_embeddings: torch.Tensor | None = None, center_texts: bool = True) -> list[tuple[str, float]]:
    """TextSpan-style greedy descriptions: k text directions that together explain the component.

    Repeatedly picks the description whose (unit) direction explains most variance of the
    centred mapped contributions, then projects that direction out of the contributions and
    out of the remaining text embeddings, so the next pick explains something new.
    Returns ``[(description, fraction of the component's variance it explained), ...]``.
    """
    x, t, names = _prepare(aligned, component, descriptions, clip, text_embeddings, center_texts)
    total = float(x.pow(2).sum())
    remaining = list(range(len(names)))
    out: list[tuple[str, float]] = []
    for _ in range(min(k, len(names))):
        cand = t[remaining]
        norms = cand.norm(dim=1)
        dirs = F.normalize(cand, dim=1)
        explained = (x @ dirs.T).pow(2).sum(0)
        explained = torch.where(norms > 1e-8, explained, torch.full_like(explained, -1.0))
        j = int(torch.argmax(explained))
        if norms[j] <= 1e-8:  # every remaining text lies in the span already taken
            break
        d = dirs[j]
        out.append((names[remaining[j]], float(explained[j]) / total if total > 0 else 0.0))
        x = x - (x @ d).unsqueeze(1) * d
        t = t - (t @ d).unsqueeze(1) * d
        remaining.pop(j)
    return out
