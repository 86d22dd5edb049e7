"""The result of a decomposing forward: contributions plus what they stand for."""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Hashable

import torch

from .components import Component, ComponentTable, is_single
from .errors import InputError, UnknownComponentError
from .groups import regroup
from .reconstruction import max_relative_error

#: Where contributions live: the model's output space, or CLIP's once mapped by an aligner.
SPACES = ("model", "clip")


class Decomposition:
    """``output == contributions.sum(1)`` up to float error.

    ``contributions`` is [B, C, *out] (out: the trailing shape of the model's
    output), ``components`` labels the C axis, ``output`` is the model's own
    output for the same images (None where it was not kept, and in a view mapped
    into CLIP space). Optional: ``clip`` [B, d_clip], CLIP's own embeddings of the
    same images (the alignment targets); ``meta`` (model, granularity, clip names).

    One type for a batch and for a data set, in the model's space or mapped into
    CLIP's (``map(aligner)``); every view (``select``, ``group``, ``take``, ``map``)
    is a method returning another ``Decomposition``.
    """

    def __init__(self, contributions: torch.Tensor, components: ComponentTable, output: torch.Tensor | None = None,
                 *, clip: torch.Tensor | None = None, meta: dict | None = None, bias: torch.Tensor | None = None,
                 space: str = "model"):
        if contributions.shape[1] != len(components):
            raise ValueError("contributions and components disagree on the number of components")
        if clip is not None and (clip.dim() != 2 or clip.shape[0] != contributions.shape[0]):
            raise InputError(f"CLIP embeddings {list(clip.shape)} do not pair with contributions "
                             f"{list(contributions.shape)}: one embedding per image is needed")
        if space not in SPACES:
            raise InputError(f"space must be one of {SPACES}, got {space!r}")
        self.contributions = contributions
        self.components = components
        self.output = output
        self.clip = clip
        self.meta = dict(meta or {})
        self.bias = bias
        self.space = space

    def _like(self, contributions: torch.Tensor, components: ComponentTable | None = None, output=None,
              clip=None) -> "Decomposition":
        """A view of the same images and space (the keyword fields carried over)."""
        return Decomposition(contributions, self.components if components is None else components, output,
                             clip=clip, meta=self.meta, bias=self.bias, space=self.space)

    # -- basics --------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.components)

    def __repr__(self) -> str:
        shape = tuple(self.contributions.shape)
        where = "" if self.space == "model" else f" in {self.space} space"
        return f"Decomposition({len(self)} components{where}, contributions {shape})"

    @property
    def names(self) -> list[str]:
        return self.components.names

    @property
    def width(self) -> int:
        """The width of every contribution (d_model, or d_clip once mapped)."""
        return self.contributions.shape[-1]

    def total(self) -> torch.Tensor:
        """Sum over components: the model's output, reconstructed (mapped: plus the aligner's shared bias, the
        aligned image vector)."""
        out = self.contributions.sum(1)
        return out + self.bias.to(out) if self.bias is not None else out

    def error(self) -> float:
        """Largest relative reconstruction error over the batch (‖Σc − y‖ / ‖y‖)."""
        if self.output is None:
            why = ("it is mapped into CLIP space, where nothing is exact to compare with" if self.space != "model"
                   else "its model output was not kept")
            raise InputError(f"this decomposition has no output to measure its error against: {why}; measure it "
                             "on the decomposition in the model's space (dm(images), run.decomposition(...))")
        b = self.output.shape[0]
        if b == 0:
            raise InputError("error() of a decomposition of no images: there is nothing to compare; decompose at "
                             "least one image")
        return float(max_relative_error(self.contributions.sum(1), self.output))

    def norms(self) -> torch.Tensor:
        """[B, C] Euclidean norm of every contribution."""
        return self.contributions.flatten(2).norm(dim=2)

    def to(self, *args, **kwargs) -> "Decomposition":
        move = lambda t: None if t is None else t.to(*args, **kwargs)  # noqa: E731
        out = self._like(move(self.contributions), output=move(self.output), clip=move(self.clip))
        out.bias = move(self.bias)
        return out

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
        return self._like(self.contributions[:, idx], comps, self.output, self.clip)

    def take(self, images) -> "Decomposition":
        """The decomposition of some of its images (indices into the batch), outputs included."""
        idx = torch.as_tensor(images, dtype=torch.long, device=self.contributions.device).reshape(-1)
        pick = lambda t: None if t is None else t[idx.to(t.device)]  # noqa: E731
        return self._like(self.contributions[idx], output=pick(self.output), clip=pick(self.clip))

    def map(self, aligner, batch_size: int = 256) -> "Decomposition":
        """Every contribution mapped into CLIP space by ``aligner`` (a ``CompAlign``): each component by its own
        map, or, finer than the aligner's, by its head's or branch's (``CompAlign.maps_for``). The view has no
        model output; its ``total()`` adds the aligner's bias (the aligned image vector)."""
        if self.space != "model":
            raise InputError(f"these contributions are already in {self.space} space; map the decomposition in the "
                             "model's space")
        if self.clip is not None:
            aligner.check_clip_dim(self.clip.shape[1])
        mapped = aligner.map_finer(self.contributions, list(self.components), batch_size=batch_size)
        meta = {**self.meta, "clip": aligner.clip_name or self.meta.get("clip")}
        return Decomposition(mapped, self.components, None, clip=self.clip, meta=meta,
                             bias=aligner.bias.detach().to(mapped), space="clip")

    # -- regrouping --------------------------------------------------------------------------
    def group(self, by: str | Callable[[Component], Hashable]) -> "Decomposition":
        """Re-aggregate finer components into coarser ones.

        ``by``: ``"branch"``/``"block"`` (whole residual branches), ``"head"``,
        ``"layer"`` (a layer's branches and biases together), ``"kind"``,
        ``"module"``, ``"token"`` (one component per source position, summed over heads and
        layers; the others kept), or a function from a :class:`Component` to a group key.
        """
        out, comps = group_contributions(self.contributions, self.components, by)
        return self._like(out, comps, self.output, self.clip)

    # -- summaries ------------------------------------------------------------------------------
    def top(self, k: int = 10) -> list[tuple[Component, float]]:
        """The k components with the largest mean contribution norm."""
        mean = self.norms().detach().mean(0)
        order = torch.argsort(mean, descending=True)[:k]
        return [(self.components[int(i)], float(mean[i])) for i in order]

    def table(self, k: int | None = None) -> str:
        """Components (the k largest, if given) with their mean norm."""
        mean = self.norms().detach().mean(0)
        rows = range(len(self.components)) if k is None else [int(i) for i in torch.argsort(mean, descending=True)[:k]]
        return self.components.table(list(rows), extra={"mean_norm": [f"{float(v):.4g}" for v in mean]})


def group_contributions(contributions: torch.Tensor, components: ComponentTable,
                        by: str | Callable[[Component], Hashable]) -> tuple[torch.Tensor, ComponentTable]:
    """``contributions`` [B, C, ...] summed into the groups of ``by`` (see ``Decomposition.group``), with the
    groups' labels: for contributions that have no model output to sum to, such as mapped ones."""
    ids, comps = regroup(components, by)
    index = torch.tensor(ids, device=contributions.device, dtype=torch.long)
    shape = list(contributions.shape)
    shape[1] = len(comps)
    return contributions.new_zeros(shape).index_add_(1, index, contributions), comps
