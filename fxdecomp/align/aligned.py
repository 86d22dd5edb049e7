"""Component contributions after alignment: every component as a vector in CLIP space.

``Aligned`` is a ``Decomposition`` mapped into CLIP space (what ``Decomposition.map(aligner)`` and
``CompAlign.map`` return), under the names it had before there was one type: ``mapped`` for its
contributions, ``component(name)`` for one of them, ``dim`` for CLIP's width, and ``len()`` counting
images. New code reads it as the ``Decomposition`` it is.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from ..components import Component, ComponentTable
from ..decomposition import Decomposition
from ..errors import InputError


def table_of(names) -> ComponentTable:
    """Components known only by name (an aligner's, or a caller's list): kind unknown (``""``)."""
    if isinstance(names, ComponentTable):
        return names
    return ComponentTable(Component(i, n, "") for i, n in enumerate(names))


class Aligned(Decomposition):
    """``mapped`` [N, C, d_clip]: f_i(c_i(x)) for N images and C components (named by ``names``);
    ``clip`` [N, d_clip]: CLIP's own normalised embedding of the same images (or None);
    ``bias``: the aligner's shared bias, so ``total()`` is the aligned image vector."""

    def __init__(self, mapped: torch.Tensor, names, clip: torch.Tensor | None = None,
                 bias: torch.Tensor | None = None, meta: dict | None = None):
        if mapped.dim() != 3 or mapped.shape[1] != len(names):
            raise InputError(f"mapped contributions {list(mapped.shape)} do not fit {len(names)} names")
        if clip is not None and tuple(clip.shape) != (mapped.shape[0], mapped.shape[2]):
            raise InputError(f"CLIP embeddings {list(clip.shape)} do not pair with mapped contributions "
                             f"{list(mapped.shape)} (same images, same CLIP width needed)")
        super().__init__(mapped, table_of(names), None, clip=clip, meta=meta, bias=bias, space="clip")

    @classmethod
    def of(cls, view: Decomposition) -> Aligned:
        """A mapped ``Decomposition`` under the older names."""
        if view.space != "clip":
            raise InputError("only a decomposition mapped into CLIP space (dec.map(aligner)) is aligned")
        return cls(view.contributions, view.components, view.clip, view.bias, view.meta)

    @property
    def mapped(self) -> torch.Tensor:
        return self.contributions

    def __len__(self) -> int:
        return self.contributions.shape[0]

    def __repr__(self) -> str:
        n, c, d = self.contributions.shape
        return f"Aligned({n} images, {c} components, d_clip={d})"

    @property
    def dim(self) -> int:
        return self.width

    def index(self, name: str | int) -> int:
        return self.components.resolve(name)[0]

    def component(self, name: str | int) -> torch.Tensor:
        """[N, d_clip] mapped contributions of one component."""
        return self.contributions[:, self.index(name)]

    def permute(self, order) -> Aligned:
        """The same data with components in another order (a list of names or indices)."""
        idx = [self.index(o) for o in order]
        if sorted(idx) != list(range(len(self.names))):
            raise InputError("permute() needs every component exactly once")
        comps = ComponentTable(replace(self.components[i], index=j) for j, i in enumerate(idx))
        return Aligned(self.contributions[:, idx], comps, self.clip, self.bias, self.meta)
