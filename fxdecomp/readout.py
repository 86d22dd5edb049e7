"""Readout matrices: what ``decompose(readout=R)`` and ``dm.set_readout(R)`` accept.

A readout is a linear map applied to the model's output and to every contribution: a text
direction, a class's classifier row, a projection to K values. Since it is a factor of every
term, the compiler contracts it into each component's product, so contributions are [B, C, K]
and nothing of the output's width is built per component.
"""
from __future__ import annotations

from math import prod

import torch

from .errors import InputError


def readout_matrix(r, out_shape: tuple, k: int | None = None, what: str = "readout") -> torch.Tensor:
    """``r`` as a [prod(out), K] matrix; refuses a matrix of the wrong shape (or, with ``k``, of
    another width), non-finite entries and anything that is not a floating-point tensor."""
    width = prod(out_shape)
    out = "[B, " + ", ".join(map(str, out_shape)) + "]"
    if not isinstance(r, torch.Tensor):
        raise InputError(f"{what} must be a tensor [{', '.join(map(str, out_shape))}, K], got {type(r).__name__}; "
                         "e.g. torch.stack(directions, 1) for K directions of the output space")
    if not r.is_floating_point():
        raise InputError(f"{what} is {r.dtype}: give a floating-point matrix (e.g. R.float())")
    shape = tuple(r.shape)
    if len(shape) < 2 or not (shape[:-1] == tuple(out_shape) or (len(shape) == 2 and shape[0] == width)):
        raise InputError(f"{what} has shape {list(shape)}, but the model's output is {out}: give a matrix of shape "
                         f"[{width}, K] (or [{', '.join(map(str, out_shape))}, K]), one column per direction of "
                         "the output space to read")
    if shape[-1] == 0:
        raise InputError(f"{what} has no columns (shape {list(shape)}): give at least one direction to read")
    if k is not None and shape[-1] != k:
        raise InputError(f"{what} has {shape[-1]} columns, not K = {k} (the width compiled for, or the other "
                         f"readouts' width): give K = {k} columns, or decompose again with the new readout")
    bad = ~torch.isfinite(r)
    if bool(bad.any()):
        where = [int(i) for i in bad.nonzero()[0]]
        raise InputError(f"{what} has {int(bad.sum())} non-finite entries (first at {where}): every entry must be "
                         "finite; check how it was computed (a direction normalised by a zero norm?)")
    return r.detach().reshape(width, shape[-1])
