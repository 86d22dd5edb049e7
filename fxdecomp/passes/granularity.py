"""Pass 12: choose how finely each component is split, and label the pieces.

A branch whose tail ends in an attention-weighted sum can be split along the
atoms that sum names: its heads (shared non-batch atoms), its windows (shared
spatial atoms, for windowed attention) and its source tokens (the contracted
atoms). The granularity (optionally only in some layers) picks which of them
stay free; every index of the free atoms becomes one labelled component.
"""
from __future__ import annotations

from math import prod

from ..components import Component, ComponentTable, slice_name
from ..core.atoms import AtomTable
from ..core.ir import BaseLabel, ComponentSpec, Group
from ..core.state import CompileState
from ..errors import InputError

GRANULARITIES = ("block", "head", "token")


def run(state: CompileState) -> CompileState:
    """Fills ``groups`` and ``components``; refuses ``layers`` the model does not have."""
    known = sorted({lab.layer for lab in state.labels if lab.layer is not None})
    if state.layers is not None:
        bad = state.layers - set(known)
        if bad:
            name = state.model_name
            raise InputError(f"no layer(s) {sorted(bad)} in {name}; its layers are {known[0]}..{known[-1]}"
                             if known else f"{name} has no layers to split")
    state.groups = plan_groups(state.specs, state.labels, state.granularity, state.layers)
    state.components = component_table(state.groups, state.axes.table)
    return state


def split_atoms(spec: ComponentSpec, lab: BaseLabel, granularity: str, layers) -> tuple:
    if spec.role != "branch" or not spec.split:
        return ()
    g = granularity if (layers is None or lab.layer in layers) else "block"
    if g == "head":
        return tuple(spec.split.get("head", ()))
    if g == "token":
        return tuple(spec.split.get("head", ())) + tuple(spec.split.get("window", ())) + \
            tuple(spec.split.get("token", ()))
    return ()


def plan_groups(specs: list[ComponentSpec], labels: list[BaseLabel], granularity: str, layers) -> list[Group]:
    groups, start = [], 0
    for spec in specs:
        split = split_atoms(spec, labels[spec.id], granularity, layers)
        count = prod(a.size for a in split) if split else 1
        groups.append(Group(spec, labels[spec.id], split, start, count))
        start += count
    return groups


def component_table(groups: list[Group], table: AtomTable) -> ComponentTable:
    comps: list[Component] = []
    for grp in groups:
        lab, spec = grp.label, grp.spec
        if not grp.split:
            comps.append(Component(len(comps), lab.name, lab.kind, lab.module, lab.module_type, lab.layer,
                                   lab.branch))
            continue
        heads = tuple(a for a in grp.split if a in spec.split.get("head", ()))
        where = tuple(a for a in grp.split if a not in heads)
        n_where = prod(a.size for a in where) if where else 1
        coords = table.coordinates(where) if where else [{}]
        token_role = {table.find(a.alias_of or a).role for a in spec.split.get("token", ())}
        meaning = ["head"] if heads else []
        if where:
            if any(a in spec.split.get("window", ()) for a in where):
                meaning.append("window")
            meaning.append("channel" if token_role == {"channel"} else "token")
        for i in range(grp.count):
            h, t = divmod(i, n_where)
            rec = coords[t] if where else {}
            head, token = (h if heads else None), (t if where else None)
            placed = rec.get("row") is not None and rec.get("col") is not None
            comps.append(Component(
                len(comps), slice_name(lab.name, head, token), lab.kind, lab.module, lab.module_type, lab.layer,
                lab.branch, head=head, token=token, row=rec.get("row"), col=rec.get("col"),
                prefix=rec.get("prefix"), split="+".join(meaning),
                grid=(rec["rows"], rec["cols"]) if placed and "rows" in rec and "cols" in rec else None))
    return ComponentTable(comps)
