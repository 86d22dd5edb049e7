"""One number per token component and image: what a heatmap shows.

A token's contribution is a vector in the model's output space. It becomes a
number by reading it along a direction (a logit, a CLIP text embedding once
mapped into CLIP space), by its size, or by its share of the component it is
part of (its projection on that component's whole contribution for the image,
so the shares of a head's tokens add up to the norm of the head's output).
"""
from __future__ import annotations

import difflib
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..components import Component
from ..errors import InputError, UnknownComponentError


def members(components: Sequence[Component], of) -> list[int]:
    """Indices of the components that are ``of`` (a name or names at any granularity: a token, a head
    such as ``blocks.5.attn[h2]``, a branch such as ``blocks.5.attn``) or match it (a predicate)."""
    comps = list(components)
    if callable(of) and not isinstance(of, str):
        return [i for i, c in enumerate(comps) if of(c)]
    wanted = [of] if isinstance(of, str) else list(of)
    out, found = [], set()
    for i, c in enumerate(comps):
        hits = {c.name, *c.ancestors()} & set(wanted)
        if hits:
            out.append(i)
            found |= hits
    missing = [w for w in wanted if w not in found]
    if missing:
        known = {n for c in comps for n in (c.name, *c.ancestors())}
        close = difflib.get_close_matches(missing[0], known, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownComponentError(f"no component, head or branch named {missing[0]!r}.{hint}")
    return out


def along_direction(contributions: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """[B, C]: every contribution read along ``direction`` ([D] for all images or [B, D] per image)."""
    d = torch.as_tensor(direction, device=contributions.device).to(contributions.dtype)
    if d.dim() == 1:
        d = d.expand(contributions.shape[0], -1)
    if d.shape != (contributions.shape[0], contributions.shape[2]):
        raise InputError(f"direction {list(d.shape)} does not fit contributions {list(contributions.shape)}: give "
                         f"one vector of width {contributions.shape[2]}, or one per image")
    return torch.einsum("bcd,bd->bc", contributions, d)


def norms(contributions: torch.Tensor) -> torch.Tensor:
    """[B, C]: the size of every contribution."""
    return contributions.norm(dim=2)


def shares(contributions: torch.Tensor, groups: Sequence[Sequence[int]]) -> torch.Tensor:
    """[B, C]: each member of each group projected on the group's summed contribution (unit
    direction, per image); components outside every group get 0."""
    out = contributions.new_zeros(contributions.shape[:2])
    for g in groups:
        idx = torch.as_tensor(list(g), dtype=torch.long, device=contributions.device)
        whole = F.normalize(contributions[:, idx].sum(1), dim=1)
        out[:, idx] = torch.einsum("bcd,bd->bc", contributions[:, idx], whole)
    return out
