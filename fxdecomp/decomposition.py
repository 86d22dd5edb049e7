"""The result of a decomposing forward: contributions plus what they stand for."""
from __future__ import annotations

from dataclasses import fields, replace
from typing import Callable, Hashable

import torch

from .components import Component, ComponentTable, is_single, slice_name
from .errors import InputError, UnknownComponentError
from .reconstruction import max_relative_error

GROUPINGS = ("branch", "block", "head", "layer", "kind", "module")


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
        return float(max_relative_error(self.total(), self.output))

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

    def take(self, images) -> "Decomposition":
        """The decomposition of some of its images (indices into the batch), outputs included."""
        idx = torch.as_tensor(images, dtype=torch.long, device=self.contributions.device).reshape(-1)
        return Decomposition(self.contributions[idx], self.components, self.output[idx.to(self.output.device)])

    # -- regrouping --------------------------------------------------------------------------
    def group(self, by: str | Callable[[Component], Hashable]) -> "Decomposition":
        """Re-aggregate finer components into coarser ones.

        ``by``: ``"branch"``/``"block"`` (whole residual branches), ``"head"``,
        ``"layer"`` (a layer's branches and biases together), ``"kind"``,
        ``"module"``, or a function from a :class:`Component` to a group key.
        """
        out, comps = group_contributions(self.contributions, self.components, by)
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


def group_contributions(contributions: torch.Tensor, components: ComponentTable,
                        by: str | Callable[[Component], Hashable]) -> tuple[torch.Tensor, ComponentTable]:
    """``contributions`` [B, C, ...] summed into the groups of ``by`` (see ``Decomposition.group``), with the
    groups' labels: for contributions that have no model output to sum to, such as mapped ones."""
    if isinstance(by, str):
        if by not in GROUPINGS:
            raise UnknownComponentError(f"unknown grouping {by!r}; use one of {GROUPINGS} or a function")
        keyfn = _KEYS[by]
    else:
        keyfn = by
    keys: dict[Hashable, int] = {}
    ids, members = [], []
    for c in components:
        k = keyfn(c)
        if k not in keys:
            keys[k] = len(keys)
            members.append([])
        ids.append(keys[k])
        members[keys[k]].append(c)
    index = torch.tensor(ids, device=contributions.device)
    shape = list(contributions.shape)
    shape[1] = len(keys)
    out = contributions.new_zeros(shape).index_add_(1, index, contributions)
    return out, ComponentTable(_merge(j, k, ms, by) for j, (k, ms) in enumerate(zip(keys, members)))


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
