"""Where token components sit in the image.

At token granularity a component is one source token of one head, and its label
carries the token's ``row``/``col`` on the grid of the stage it belongs to (a
ViT's patch grid, a Swin stage's grid whatever its windows, a later, coarser
stage) and that grid's size (``grid``, found by the compiler), so no model needs
describing: the labels say it all.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..components import Component, ComponentTable
from ..errors import InputError


@dataclass(frozen=True)
class TokenLayout:
    """Token components (``index`` into the component table) and their places.

    ``grid[k]`` is the position in ``grids`` of token k's grid, ``(row[k], col[k])`` its cell there;
    ``grids`` lists each distinct grid as (rows, cols).
    """

    index: torch.Tensor
    grid: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor
    grids: tuple[tuple[int, int], ...]

    def __len__(self) -> int:
        return len(self.index)


def has_tokens(components: Sequence[Component]) -> bool:
    """Whether any component is a token placed on a grid."""
    return any(c.row is not None and c.col is not None for c in components)


def grid_of(c: Component) -> tuple[int, int]:
    """(rows, cols) of the grid a placed token's ``row``/``col`` index."""
    if c.grid is None:
        raise InputError(f"{c.name} has a position but no grid size: its components come from an older fxdecomp "
                         "or were built by hand; decompose the model again (or give each placed token grid=(rows, "
                         "cols))")
    return c.grid


def token_layout(components: ComponentTable | Sequence[Component], indices: Sequence[int] | None = None) -> TokenLayout:
    """The layout of the placed tokens among ``components`` (or among ``indices`` of them).

    Tokens without a position (class and register tokens, channel "tokens") are left out:
    they are not anywhere in the image.
    """
    comps = list(components)
    if not has_tokens(comps):
        raise InputError("these components have no token positions: decompose at token granularity "
                         "(fxdecomp.decompose(model, 'token'), optionally layers=[...]) to draw token heatmaps")
    chosen = range(len(comps)) if indices is None else indices
    grids: dict[tuple[int, int], int] = {}
    idx, grid, row, col = [], [], [], []
    for i in chosen:
        c = comps[i]
        if c.row is None or c.col is None:
            continue
        shape = grid_of(c)
        idx.append(i)
        grid.append(grids.setdefault(shape, len(grids)))
        row.append(c.row)
        col.append(c.col)
    if not idx:
        raise InputError("none of the chosen components is a token with a position on the image grid; "
                         "choose attention components at token granularity")
    as_long = lambda v: torch.tensor(v, dtype=torch.long)  # noqa: E731
    return TokenLayout(as_long(idx), as_long(grid), as_long(row), as_long(col), tuple(grids))
