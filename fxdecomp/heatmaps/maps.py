"""Token values put back on the image: one map per image, any grid, any number of grids.

Each token's value is spread evenly over the pixels of its cell (a density), so a map
sums to the sum of the token values whatever the grids: tokens of a coarse stage and
of a fine one add up on the same pixels without either being over-counted.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..errors import InputError
from .layout import TokenLayout

MODES = ("bilinear", "nearest")


def grid_maps(values: torch.Tensor, layout: TokenLayout) -> list[torch.Tensor]:
    """Per grid, [B, rows, cols]: the sum of the values of the tokens in each cell.

    ``values`` is [B, C] over the whole component table (only ``layout.index`` is read) or
    [B, len(layout)] over the layout's tokens.
    """
    if values.dim() != 2:
        raise InputError(f"token values must be [images, components], got {list(values.shape)}")
    vals = values[:, layout.index] if values.shape[1] != len(layout) else values
    out = []
    for g, (rows, cols) in enumerate(layout.grids):
        sel = layout.grid == g
        flat = layout.row[sel] * cols + layout.col[sel]
        m = vals.new_zeros(vals.shape[0], rows * cols).index_add_(1, flat.to(vals.device), vals[:, sel.to(vals.device)])
        out.append(m.view(-1, rows, cols))
    return out


def pixel_maps(values: torch.Tensor, layout: TokenLayout, size: Sequence[int], mode: str = "bilinear") -> torch.Tensor:
    """[B, H, W] maps of token values on images of ``size`` (H, W).

    ``mode``: ``"bilinear"`` (smooth, what segmentation thresholds) or ``"nearest"`` (every
    token exactly its cell).
    """
    if mode not in MODES:
        raise InputError(f"mode must be one of {MODES}, got {mode!r}")
    h, w = int(size[0]), int(size[1])
    total = None
    for (rows, cols), m in zip(layout.grids, grid_maps(values, layout)):
        density = m.unsqueeze(1) * (rows * cols) / (h * w)
        kw = {"align_corners": False} if mode == "bilinear" else {}
        up = F.interpolate(density, size=(h, w), mode=mode, **kw)[:, 0]
        total = up if total is None else total + up
    return total


def finest(layout: TokenLayout) -> tuple[int, int]:
    """The grid with the most cells."""
    return max(layout.grids, key=lambda g: g[0] * g[1])


def grid_vectors(contributions: torch.Tensor, layout: TokenLayout, grid: Sequence[int] | None = None,
                 mode: str = "bilinear") -> torch.Tensor:
    """[B, D, rows, cols]: the summed contribution vectors of the tokens at each cell of ``grid``
    (default: the finest), every token spread evenly over the cells its own cell covers.

    ``contributions`` is [B, len(layout), D] over the layout's tokens. Summing vectors before
    taking any norm is what makes this each position's total direct contribution.
    """
    if mode not in MODES:
        raise InputError(f"mode must be one of {MODES}, got {mode!r}")
    rows_o, cols_o = grid if grid is not None else finest(layout)
    b, _, d = contributions.shape
    total = contributions.new_zeros(b, d, rows_o, cols_o)
    for g, (rows, cols) in enumerate(layout.grids):
        sel = (layout.grid == g).to(contributions.device)
        flat = (layout.row * cols + layout.col).to(contributions.device)[sel]
        m = contributions.new_zeros(b, rows * cols, d).index_add_(1, flat, contributions[:, sel])
        m = m.transpose(1, 2).reshape(b, d, rows, cols) * (rows * cols) / (rows_o * cols_o)
        if (rows, cols) != (rows_o, cols_o):
            kw = {"align_corners": False} if mode == "bilinear" else {}
            m = F.interpolate(m, size=(rows_o, cols_o), mode=mode, **kw)
        total += m
    return total
