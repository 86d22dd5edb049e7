"""The result of a decomposing forward: contributions plus what they stand for."""
from __future__ import annotations

from dataclasses import fields, replace
from typing import Callable, Hashable

import torch

from .components import Component, ComponentTable, is_single
from .errors import InputError, UnknownComponentError

GROUPINGS = ("branch", "block", "head", "layer", "kind", "module", "token")


class Decomposition:
    """``output == contributions.sum(1)`` up to float error.

    ``contributions`` is [B, C, *out] (out: the trailing shape of the model's
    output), ``components`` labels the C axis, ``output`` is the model's own
    output for the same images.
    """

    def __init__(self, contributions: torch.Tensor, components: ComponentTable, output: torch.Tensor):
        if contributions.shape[1] != len(components):
            raise ValueError("contributions and components disagree on the number of components")
        self.contributions = contributions
        self.components = components
        self.output = output

    # -- basics --------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.components)

    def __repr__(self) -> str:
        shape = tuple(self.contributions.shape)
        return f"Decomposition({len(self)} components, contributions {shape})"

    def total(self) -> torch.Tensor:
        """Sum over components: the model's output, reconstructed."""
        return self.contributions.sum(1)

    def error(self) -> float:
        """Largest relative reconstruction error over the batch (‖Σc − y‖ / ‖y‖)."""
        b = self.output.shape[0]
        if b == 0:
            raise InputError("error() of a decomposition of no images: there is nothing to compare; decompose at "
                             "least one image")
        diff = (self.total() - self.output).detach().reshape(b, -1).double().norm(dim=1)
        ref = self.output.detach().reshape(b, -1).double().norm(dim=1).clamp_min(torch.finfo(torch.float64).tiny)
        return float((diff / ref).max())

    def norms(self) -> torch.Tensor:
        """[B, C] Euclidean norm of every contribution."""
        return self.contributions.flatten(2).norm(dim=2)

    def to(self, *args, **kwargs) -> "Decomposition":
        return Decomposition(self.contributions.to(*args, **kwargs), self.components, self.output.to(*args, **kwargs))

    def cpu(self) -> "Decomposition":
        return self.to("cpu")

    # -- selection ------------------------------------------------------------------------
    def __getitem__(self, selector) -> torch.Tensor:
        """Contributions [B, *out] of one component (by name or index), or [B, k, *out] of several."""
        idx = self.components.resolve(selector)
        if is_single(selector):
            return self.contributions[:, idx[0]]
        return self.contributions[:, idx]

    def select(self, selector=None, **match) -> "Decomposition":
        """A decomposition restricted to some components (names, indices, predicate or field=value).

        The restricted contributions no longer sum to ``output``.
        """
        if selector is None and not match:
            raise UnknownComponentError("select() needs component names/indices, a predicate or field=value")
        idx = self.components.resolve(selector) if selector is not None else self.components.where(**match)
        if selector is not None and match:
            keep = set(self.components.where(**match))
            idx = [i for i in idx if i in keep]
        comps = ComponentTable(replace(self.components[i], index=j) for j, i in enumerate(idx))
        return Decomposition(self.contributions[:, idx], comps, self.output)

    # -- regrouping --------------------------------------------------------------------------
    def group(self, by: str | Callable[[Component], Hashable]) -> "Decomposition":
        """Re-aggregate finer components into coarser ones.

        ``by``: ``"branch"``/``"block"`` (whole residual branches), ``"head"``,
        ``"layer"`` (a layer's branches and biases together), ``"kind"``,
        ``"module"``, ``"token"`` (one component per source position, summed over heads and
        layers; the others kept), or a function from a :class:`Component` to a group key.
        """
        ids, comps = regroup(self.components, by)
        index = torch.tensor(ids, device=self.contributions.device, dtype=torch.long)
        shape = list(self.contributions.shape)
        shape[1] = len(comps)
        out = self.contributions.new_zeros(shape).index_add_(1, index, self.contributions)
        return Decomposition(out, comps, self.output)

    # -- summaries ------------------------------------------------------------------------------
    def top(self, k: int = 10) -> list[tuple[Component, float]]:
        """The k components with the largest mean contribution norm."""
        mean = self.norms().detach().mean(0)
        order = torch.argsort(mean, descending=True)[:k]
        return [(self.components[int(i)], float(mean[i])) for i in order]

    def table(self, k: int | None = None) -> str:
        """Components (the k largest, if given) with their mean norm."""
        mean = self.norms().detach().mean(0)
        rows = range(len(self)) if k is None else [int(i) for i in torch.argsort(mean, descending=True)[:k]]
        return self.components.table(list(rows), extra={"mean_norm": [f"{float(v):.4g}" for v in mean]})


def regroup(components: ComponentTable, by: str | Callable[[Component], Hashable]) -> tuple[list[int], ComponentTable]:
    """(for every component, the index of its group; the groups' components) for ``group(by)``.

    Shared with the compiler, which sums groups at compile time (``decompose(..., group=by)``)
    and must name them as grouping afterwards does."""
    if by == "token":
        return _by_position(components)
    if isinstance(by, str):
        if by not in GROUPINGS:
            raise UnknownComponentError(f"unknown grouping {by!r}; use one of {GROUPINGS} or a function from a "
                                        "Component to a group key")
        keyfn = _KEYS[by]
    elif callable(by):
        keyfn = by
    else:
        raise UnknownComponentError(f"unknown grouping {by!r}; use one of {GROUPINGS} or a function from a "
                                    "Component to a group key")
    keys: dict[Hashable, int] = {}
    ids, members = [], []
    for c in components:
        k = keyfn(c)
        if k not in keys:
            keys[k] = len(keys)
            members.append([])
        ids.append(keys[k])
        members[keys[k]].append(c)
    return ids, ComponentTable(_merge(j, k, ms, by) for j, (k, ms) in enumerate(zip(keys, members)))


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
            e = extent.setdefault(c.branch, [0, 0])
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

    keys: dict = {}
    ids, members = [], []
    for c in components:
        k = key(c)
        if k not in keys:
            keys[k] = len(keys)
            members.append([])
        ids.append(keys[k])
        members[keys[k]].append(c)
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
    base = {m.name.split("[")[0] for m in members}
    if by in ("branch", "block", "head") and len(base) == 1:
        name = base.pop()
        if by == "head" and first.head is not None:
            name = f"{name}[h{first.head}]"
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
