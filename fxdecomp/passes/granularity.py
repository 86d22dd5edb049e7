"""Pass 12: choose how finely each component is split, and label the pieces.

A branch whose tail ends in an attention-weighted sum can be split along the
atoms that sum names: its heads (shared non-batch atoms), its windows (shared
spatial atoms, for windowed attention) and its source tokens (the contracted
atoms). The granularity (optionally only in some layers) picks which of them
stay free; every index of the free atoms becomes one labelled component.

At ``"neuron"`` granularity attention branches are split by head and every other branch
along the input axis of its last weighted layer (``core/neurons.py``), one component per
hidden unit; a branch that has no such axis stays whole, and ``dm.notes`` says why.
"""
from __future__ import annotations

from math import prod

from ..components import Component, ComponentTable, slice_name
from ..core.atoms import AtomTable
from ..core.context import RuleContext
from ..core.ir import BaseLabel, ComponentSpec, Group
from ..core.neurons import neuron_axis
from ..core.state import CompileState
from ..errors import InputError

GRANULARITIES = ("block", "head", "token", "neuron")


def run(state: CompileState) -> CompileState:
    """Fills ``groups`` and ``components``; refuses ``layers`` the model does not have."""
    known = sorted({lab.layer for lab in state.labels if lab.layer is not None})
    if state.layers is not None:
        bad = state.layers - set(known)
        if bad:
            name = state.model_name
            raise InputError(f"no layer(s) {sorted(bad)} in {name}; its layers are {known[0]}..{known[-1]}"
                             if known else f"{name} has no layers to split")
    if state.granularity == "neuron":
        find_neurons(state)
    state.groups = plan_groups(state.specs, state.labels, state.granularity, state.layers)
    state.components = component_table(state.groups, state.axes.table)
    return state


def find_neurons(state: CompileState) -> None:
    """Names each non-attention branch's hidden-unit atoms (``slicing["neuron"]``) in the chosen
    layers; refuses a model where no branch has them, naming the branches it has."""
    ctx = RuleContext(state)
    by_spec: dict = {}
    for t in state.terms:
        by_spec.setdefault(t.component.id, []).append(t)
    branches, split_any = [], False
    for spec in state.specs:
        lab = state.labels[spec.id]
        if spec.category not in ("branch", "collapsed"):
            continue
        branches.append(f"{lab.name} ({lab.kind})")
        if spec.category != "branch" or lab.kind == "attn" or (state.layers is not None and lab.layer not in state.layers):
            continue
        found = neuron_axis(state, spec, by_spec.get(spec.id, []), ctx)
        if not found.atoms:
            state.split_notes.append(f"{lab.name} is not split by neuron: {found.why}; it stays one component.")
            continue
        spec.slicing = dict(spec.slicing, neuron=found.atoms)
        split_any = True
        # the codegen reads a slicing atom through ``renamed``; the neuron atoms are named as the
        # terms hold them now (an earlier rename, as by a norm before the last layer, came before)
        for t in by_spec.get(spec.id, []):
            if any(a in t.renamed for a in found.atoms):
                t.renamed = {k: v for k, v in t.renamed.items() if k not in found.atoms}
    if not split_any:
        where = f" in layers {sorted(state.layers)}" if state.layers is not None else ""
        listed = ", ".join(branches[:8]) + (f" and {len(branches) - 8} more" if len(branches) > 8 else "") \
            if branches else "none"
        raise InputError(f"neuron granularity splits MLP branches per hidden unit, but {state.model_name} has no "
                         f"branch{where} that can be split so (its branches: {listed}); use granularity 'head' "
                         "or 'token'" + (f" ({state.split_notes[0]})" if state.split_notes else ""))


def slicing_atoms(spec: ComponentSpec, lab: BaseLabel, granularity: str, layers) -> tuple:
    if spec.category != "branch" or not spec.slicing:
        return ()
    g = granularity if (layers is None or lab.layer in layers) else "block"
    if g == "head":
        return tuple(spec.slicing.get("head", ()))
    if g == "neuron":
        return tuple(spec.slicing.get("neuron", ())) or tuple(spec.slicing.get("head", ()))
    if g == "token":
        return tuple(spec.slicing.get("head", ())) + tuple(spec.slicing.get("window", ())) + \
            tuple(spec.slicing.get("token", ()))
    return ()


def plan_groups(specs: list[ComponentSpec], labels: list[BaseLabel], granularity: str, layers) -> list[Group]:
    groups, start = [], 0
    for spec in specs:
        slicing = slicing_atoms(spec, labels[spec.id], granularity, layers)
        count = prod(a.size for a in slicing) if slicing else 1
        groups.append(Group(spec, labels[spec.id], slicing, start, count))
        start += count
    return groups


def component_table(groups: list[Group], table: AtomTable) -> ComponentTable:
    comps: list[Component] = []
    for grp in groups:
        lab, spec = grp.label, grp.spec
        if not grp.slicing:
            comps.append(Component(len(comps), lab.name, lab.kind, lab.module, lab.module_type, lab.layer,
                                   lab.branch))
            continue
        if grp.slicing == tuple(spec.slicing.get("neuron", ())):
            first = len(comps)
            comps.extend([Component(first + n, f"{lab.name}[n{n}]", lab.kind, lab.module, lab.module_type,
                                    lab.layer, lab.branch, neuron=n, split="neuron") for n in range(grp.count)])
            continue
        heads = tuple(a for a in grp.slicing if a in spec.slicing.get("head", ()))
        where = tuple(a for a in grp.slicing if a not in heads)
        n_where = prod(a.size for a in where) if where else 1
        coords = table.coordinates(where) if where else [{}]
        token_role = {table.find(a.alias_of or a).role for a in spec.slicing.get("token", ())}
        meaning = ["head"] if heads else []
        if where:
            if any(a in spec.slicing.get("window", ()) for a in where):
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
