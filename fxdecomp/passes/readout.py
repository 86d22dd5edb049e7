"""Pass 14: the readout every term ends with (``decompose(..., readout=R)``).

``R`` maps the output's trailing axes to K values; it is one more factor of every term, so the
planner contracts it where it pays (with the output projection and the final norm's weights,
once, before any per-image value): contributions come out [B, C, K] and nothing of the output's
width is built per component. ``R`` is one matrix for every component, or one per component
group, named as the components are at this granularity or a coarser one: a head's tokens read
through their head's map (``blocks.3.attn[h2]``), a whole branch through its own.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from ..core.ir import Group, Readout
from ..core.state import CompileState
from ..errors import InputError
from ..readout import readout_matrix


def run(state: CompileState) -> CompileState:
    """Fills ``readout_plan`` (None without a readout)."""
    if state.readout is None:
        return state
    out_shape = tuple(state.out.meta["tensor_meta"].shape[1:])
    if isinstance(state.readout, Mapping):
        mats, rows = per_group(state.readout, state.groups, out_shape)
    else:
        mats, rows = [readout_matrix(state.readout, out_shape)], [(0, None)] * len(state.groups)
    matrix = torch.stack(mats).to(device=state.device, dtype=state.dtype)
    k = int(matrix.shape[-1])
    atoms = (state.axes.table.new(k, ("readout",), "channel"),) if k > 1 else ()
    state.readout_plan = Readout(matrix, out_shape, atoms, rows)
    return state


def per_group(maps: Mapping, groups: list[Group], out_shape: tuple) -> tuple[list, list]:
    """The matrices of a per-component readout in the order groups read them, and each group's rows."""
    if not maps:
        raise InputError("readout= is an empty mapping: give one [D, K] matrix per component group (or one matrix "
                         "for all)")
    checked, k = {}, None
    for name, r in maps.items():
        checked[name] = readout_matrix(r, out_shape, k, what=f"readout[{name!r}]")
        k = checked[name].shape[-1]
    mats, rows, missing, used = [], [], [], set()
    for grp in groups:
        name = grp.label.name
        heads = tuple(a for a in grp.slicing if a in grp.spec.slicing.get("head", ()))
        if name in checked:
            rows.append((len(mats), None))
            mats.append(checked[name])
            used.add(name)
        elif len(heads) == 1 and all(f"{name}[h{h}]" in checked for h in range(heads[0].size)):
            rows.append((len(mats), heads[0]))
            for h in range(heads[0].size):
                mats.append(checked[f"{name}[h{h}]"])
                used.add(f"{name}[h{h}]")
        else:
            missing.append(name + ("[h*]" if heads else ""))
    if missing:
        raise InputError(f"readout= has no matrix for {len(missing)} component group(s), e.g. {missing[:4]}: give one "
                         "per component at this granularity or a coarser one (a branch's name, or each of its "
                         "heads' names at head or token granularity)")
    unknown = sorted(set(checked) - used)
    if unknown:
        raise InputError(f"readout= names {len(unknown)} component(s) this decomposition does not have, e.g. "
                         f"{unknown[:4]}: name them as the components of a head-granularity decomposition of the "
                         "same model are named")
    return mats, rows
