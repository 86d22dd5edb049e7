"""How components group: the labels ``Decomposition.group(by)`` gives, and which component falls in
which group. Below the compiler and the result type alike, because both use it: the compiler
sums groups at compile time (``decompose(..., group=by)``) and must name them exactly as grouping
a full decomposition afterwards does."""
from __future__ import annotations

from dataclasses import fields, replace
from typing import Callable, Hashable

from .components import Component, ComponentTable, slice_name
from .errors import UnknownComponentError

GROUPINGS = ("branch", "block", "head", "layer", "kind", "module", "token")


def regroup(components: ComponentTable, by: str | Callable[[Component], Hashable]) -> tuple[list[int], ComponentTable]:
    """(for every component, the index of its group; the groups' components) for ``group(by)``.
"""
    if by == "token":
        return _by_position(components)
    keyfn = _KEYS.get(by) if isinstance(by, str) else by if callable(by) else None
    if keyfn is None:
        raise UnknownComponentError(f"unknown grouping {by!r}; use one of {GROUPINGS} or a function from a "
                                    "Component to a group key")
    ids, keys, members = _bucket(components, keyfn)
    return ids, ComponentTable(_merge(j, k, ms, by) for j, (k, ms) in enumerate(zip(keys, members)))


def _bucket(components, keyfn) -> tuple[list[int], dict, list[list[Component]]]:
    """Each component's group index, the group keys in first-seen order, and each group's members."""
    keys: dict[Hashable, int] = {}
    ids, members = [], []
    for c in components:
        k = keyfn(c)
        if k not in keys:
            keys[k] = len(keys)
            members.append([])
        ids.append(keys[k])
        members[keys[k]].append(c)
    return ids, keys, members


def _by_position(components: ComponentTable) -> tuple[list[int], ComponentTable]:
    """``regroup(components, "token")``: one component per source position, summed over heads and
    layers: a cell of a token grid (a hierarchical model's stages each have their own grid, the
    extent of the cells its branches' tokens take), a learned token, or else an index along the
    split (a channel-attention model's channels). Components not split by token stay whole. A
    position's ``branch`` is the first branch it sums over (the same for every cell of one grid), its
    ``token`` its index on its grid (row-major; a learned token's, its first member's)."""
    extent: dict[int, list[int]] = {}
    for c in components:
        if c.token is not None and c.row is not None and c.col is not None:
            if c.grid is not None:  # as the compiler found it
                extent[c.branch] = list(c.grid)
                continue
            e = extent.setdefault(c.branch, [0, 0])  # labels written before components knew their grid
            e[0], e[1] = max(e[0], c.row + 1), max(e[1], c.col + 1)
    grids = {tuple(e) for e in extent.values()}

    def key(c: Component):
        if c.token is None:
            return ("component", c.name)
        if c.row is not None and c.col is not None:
            return ("cell", tuple(extent[c.branch]), c.row, c.col)
        if c.prefix is not None:
            return ("prefix", c.prefix)
        return ("index", c.split, c.token)

    def name(k) -> str:
        if k[0] == "cell":
            grid = f"{k[1][0]}x{k[1][1]}:" if len(grids) > 1 else ""
            return f"token[{grid}r{k[2]},c{k[3]}]"
        if k[0] == "prefix":
            return f"token[{k[1]}]"
        return f"{'channel' if k[1] and 'channel' in k[1] else 'token'}[t{k[2]}]"

    ids, keys, members = _bucket(components, key)
    out = []
    for j, (k, ms) in enumerate(zip(keys, members)):
        if k[0] == "component":
            out.append(replace(ms[0], index=j))
        else:
            merged = _merge(j, k, ms, None)
            token = k[2] * k[1][1] + k[3] if k[0] == "cell" else ms[0].token
            out.append(replace(merged, name=name(k), branch=min(m.branch for m in ms), token=token))
    return ids, ComponentTable(out)


def _layer_key(c: Component):
    if c.layer is not None:
        return ("layer", c.layer)
    return ("branch", c.branch)


_KEYS: dict[str, Callable[[Component], Hashable]] = {
    "branch": lambda c: c.branch,
    "block": lambda c: c.branch,
    "head": lambda c: (c.branch, c.head),
    "layer": _layer_key,
    "kind": lambda c: c.kind,
    "module": lambda c: c.module,
}


def _merge(index: int, key, members: list[Component], by) -> Component:
    first = members[0]
    if len(members) == 1:
        return replace(first, index=index)
    common = {}
    for f in fields(Component):
        if f.name in ("index", "name"):
            continue
        vals = {getattr(m, f.name) for m in members}
        common[f.name] = vals.pop() if len(vals) == 1 else None
    base = {m.base_name for m in members}
    if by in ("branch", "block", "head") and len(base) == 1:
        name = base.pop()
        if by == "head" and first.head is not None:
            name = slice_name(name, head=first.head)
    elif by == "layer" and first.layer is not None:
        name = f"layer{first.layer}"
    elif by == "kind":
        name = first.kind
    elif by == "module":
        name = first.module or "(root)"
    else:
        name = str(key)
    common["kind"] = common["kind"] or "mixed"
    common["branch"] = common["branch"] if common["branch"] is not None else -1
    common["module"] = common["module"] or ""
    common["module_type"] = common["module_type"] or ""
    return Component(index=index, name=name, **common)
