"""Where the rows and columns of each recorded attention map sit in the image.

A token-granularity decomposition already knows, for every attention branch,
the position of each (window, token) index its attention reads: the token
components' ``row``/``col`` (or ``prefix``). The same positions place the
recorded attention maps, so windowed, shifted and merged attention (Swin) is
put on its stage's grid exactly as the decomposition's own tokens are.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..components import Component
from ..errors import InputError
from ..heatmaps.layout import grid_of


@dataclass(frozen=True)
class Stage:
    """One attention branch's token space: its prefix tokens, then its grid's cells, row-major.

    ``slots[j]``: the place of the j-th flattened (window, token) index of the branch's
    attention among those ``size`` tokens (-1: padding).
    """

    name: str
    grid: tuple[int, int]
    prefixes: tuple[str, ...]
    slots: torch.Tensor

    @property
    def size(self) -> int:
        return len(self.prefixes) + self.grid[0] * self.grid[1]

    @property
    def cells(self) -> slice:
        return slice(len(self.prefixes), self.size)


def attention_stages(components: Sequence[Component]) -> list[Stage]:
    """Every attention branch split by token, in forward order, with the place of each of its tokens."""
    branches: dict[int, list[Component]] = {}
    for c in components:
        if c.kind == "attn" and c.token is not None:
            branches.setdefault(c.branch, []).append(c)
    if not branches:
        raise InputError("no attention components split by token: decompose the model at token granularity "
                         "(fxdecomp.decompose(model, 'token')) to place attention maps on the image")
    stages = []
    for branch in sorted(branches):
        comps = branches[branch]
        head = min((c.head for c in comps if c.head is not None), default=None)
        toks = sorted((c for c in comps if c.head == head), key=lambda c: c.token)
        placed = [c for c in toks if c.row is not None and c.col is not None]  # not padding (row only)
        if not placed:
            continue  # channel attention: its "tokens" are not places
        grids = {grid_of(c) for c in placed}
        if len(grids) != 1:
            raise InputError(f"the tokens of {placed[0].base_name} sit on grids of several sizes {sorted(grids)}; one "
                             "attention branch reads one grid")
        rows, cols = grids.pop()
        prefixes = tuple(dict.fromkeys(c.prefix for c in toks if c.prefix is not None))
        slots = [len(prefixes) + c.row * cols + c.col if c.row is not None and c.col is not None else
                 prefixes.index(c.prefix) if c.prefix is not None else -1 for c in toks]
        stages.append(Stage(toks[0].base_name, (rows, cols), prefixes, torch.tensor(slots)))
    return stages


def dense(attn: torch.Tensor, stage: Stage, batch: int) -> torch.Tensor:
    """[B, heads, T, T] on the stage's tokens from a recorded map [B * windows, heads, N, N]."""
    bw, heads, n, _ = attn.shape
    flat = len(stage.slots)
    if flat % n or bw != batch * (flat // n):
        raise InputError(f"the attention map {list(attn.shape)} does not fit {stage.name}'s {flat} tokens for a batch "
                         f"of {batch}: the recorded attention and the decomposition's branches do not correspond")
    windows = flat // n
    a = attn.reshape(batch, windows, heads, n, n)
    out = attn.new_zeros(batch, heads, stage.size, stage.size)
    slots = stage.slots.to(attn.device).view(windows, n)
    for w in range(windows):
        keep = slots[w] >= 0
        s = slots[w][keep]
        out[:, :, s.unsqueeze(1), s.unsqueeze(0)] = a[:, w][:, :, keep][:, :, :, keep]
    return out


def merge_matrix(old: Stage, new: Stage) -> torch.Tensor:
    """[T_new, T_old]: each new token as the mean of the old tokens it covers (a patch merging or any
    coarsening of the grid); prefix tokens carry over by name."""
    m = torch.zeros(new.size, old.size, dtype=torch.float64)
    for i, p in enumerate(new.prefixes):
        if p in old.prefixes:
            m[i, old.prefixes.index(p)] = 1.0
    (ro, co), (rn, cn) = old.grid, new.grid
    for r in range(ro):
        for c in range(co):
            m[new.cells.start + (r * rn // ro) * cn + (c * cn // co), old.cells.start + r * co + c] = 1.0
    counts = m.sum(1, keepdim=True)
    return m / counts.clamp_min(1.0)
