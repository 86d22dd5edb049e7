"""Pass 13: sum components at compile time (``decompose(..., group=by)``).

A grouping of the finished decomposition (``Decomposition.group``) adds the slices of one group
together; doing it inside the generated code means the fine slices never exist. A group's pieces
are indexed by its slicing atoms (heads, windows, source tokens): an atom along which every piece
lands in the same group is *summed* (left out of the contraction's output, so the einsum adds it
up), the others are *kept* and written where their groups are. Groups whose slots follow one
another (a layer's tokens onto the positions' slots) are added in place; others (windowed
attention, whose shifted windows reorder the positions) are added through an index. Without
``group``, every group keeps all its atoms in its own slots.
"""
from __future__ import annotations

from math import prod

import torch

from ..core.ir import Group, Target
from ..core.state import CompileState
from ..groups import regroup


def run(state: CompileState) -> CompileState:
    """Fills ``targets``; with ``group``, replaces ``components`` by the grouped ones."""
    if state.group is None:
        state.targets = [Target(g.start, g.count, tuple(g.slicing)) for g in state.groups]
        return state
    ids, grouped = regroup(state.components, state.group)
    state.targets = [target(g, ids[g.start:g.start + g.count]) for g in state.groups]
    state.components = grouped
    return state


def target(grp: Group, slots: list[int]) -> Target:
    """Where ``grp``'s pieces go, given the grouped slot of each (row-major over its slicing atoms)."""
    sizes = [a.size for a in grp.slicing]
    if not sizes:
        return Target(slots[0], 1, ())
    t = torch.tensor(slots).reshape(sizes)
    summed = tuple(a for d, a in enumerate(grp.slicing) if bool((t == t.narrow(d, 0, 1)).all()))
    keep = tuple(a for a in grp.slicing if a not in summed)
    for d in reversed(range(len(sizes))):
        if grp.slicing[d] in summed:
            t = t.select(d, 0)
    flat = [int(v) for v in t.reshape(-1)]
    count = prod(a.size for a in keep) if keep else 1
    if flat == list(range(flat[0], flat[0] + count)):
        return Target(flat[0], count, keep, summed)
    return Target(0, count, keep, summed, index=tuple(flat))
