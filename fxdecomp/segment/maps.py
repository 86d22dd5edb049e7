"""Segmentation maps from a token-granularity decomposition.

A position's direct contribution is the sum of the contributions of every token
there, over all heads and layers (or the chosen ``layers``): the representation
itself split by image position. ``reduce`` turns that vector into one number:

* ``"norm"``: its size (no class needed: where the representation comes from);
* ``"signed"``: read along a direction, e.g. the true class's logit (the paper's map);
* ``"abs"``: the size of that reading.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch

from ..errors import InputError
from ..heatmaps.heatmap import text_direction
from ..heatmaps.layout import token_layout
from ..heatmaps.maps import grid_vectors

REDUCTIONS = ("norm", "signed", "abs")


def position_decomposition(model: torch.nn.Module, layers: Iterable[int] | None = None):
    """``model`` decomposed into one component per image position (the tokens of every head and
    layer, or of ``layers``, summed there at compile time: ``decompose(..., group="token")``): what
    :func:`position_maps` reads, without building every token's contribution (DeiT-B: 197 positions
    instead of 28,407 tokens at the output's width)."""
    import fxdecomp

    return fxdecomp.decompose(model, "token", layers=layers, group="token")


#: Largest number of elements of the [images, D, H, W] vector field built at once.
CHUNK = 1 << 25


def position_maps(data, *, size=None, direction=None, text=None, clip=None, aligner=None,
                  layers: Iterable[int] | None = None, reduce: str = "norm") -> torch.Tensor:
    """[B, H, W]: each position's direct contribution, reduced, on ``size`` (H, W) (default: the
    finest token grid). Contribution vectors are interpolated to ``size`` before their norm is
    taken, so a pixel between an object token and a background token is the mix of both vectors.

    ``data``: a token-granularity ``Decomposition`` (anything with ``.contributions`` and
    ``.components``). ``direction`` ([D] or [B, D]) or ``text`` (with ``clip``; and ``aligner``
    unless the output already is CLIP's embedding) give the direction for ``"signed"``/``"abs"``.
    """
    if reduce not in REDUCTIONS:
        raise InputError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    components = list(data.components)
    chosen = None
    if layers is not None:
        wanted = set(int(i) for i in layers)
        known = sorted({c.layer for c in components if c.layer is not None})
        missing = sorted(wanted - set(known))
        tokens = [c for c in components if c.token is not None]
        if any(c.layer is None for c in tokens):
            raise InputError("these positions are already summed over layers (decompose(..., group='token')): choose "
                             "the layers when compiling, position_decomposition(model, layers=[...])")
        if missing:
            raise InputError(f"no layer(s) {missing} among the components; their layers are "
                             + (f"{known[0]}..{known[-1]}" if known else "none"))
        chosen = [i for i, c in enumerate(components) if c.layer in wanted]
    layout = token_layout(components, chosen)
    c = data.contributions[:, layout.index].double()
    if aligner is not None:
        c = aligner.map_finer(c, [components[int(i)] for i in layout.index]).double()
    if reduce == "norm":
        grid = tuple(size) if size is not None else None
        step = max(1, CHUNK // (c.shape[2] * (grid[0] * grid[1] if grid else 1024)))
        return torch.cat([grid_vectors(c[i:i + step], layout, grid).norm(dim=1) for i in range(0, len(c), step)])
    if text is not None:
        direction = text_direction(text, clip, c.shape[2])
    if direction is None:
        raise InputError(f"reduce={reduce!r} needs a direction (or a text) to read the contributions along")
    d = torch.as_tensor(direction, device=c.device).double()
    d = d.expand(c.shape[0], -1) if d.dim() == 1 else d
    if d.shape != (c.shape[0], c.shape[2]):
        raise InputError(f"direction {list(d.shape)} does not fit contributions of width {c.shape[2]} for "
                         f"{c.shape[0]} images")
    reading = torch.einsum("btd,bd->bt", c, d).unsqueeze(-1)
    out = grid_vectors(reading, layout, tuple(size) if size is not None else None)[:, 0]
    return out.abs() if reduce == "abs" else out
