"""Component contributions after alignment: every component as a vector in CLIP space."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError, UnknownComponentError


@dataclass
class Aligned:
    """``mapped`` [N, C, d_clip]: f_i(c_i(x)) for N images and C components (named by ``names``);
    ``clip`` [N, d_clip]: CLIP's own normalised embedding of the same images (or None);
    ``bias``: the aligner's shared bias, so ``total()`` is the aligned image vector."""

    mapped: torch.Tensor
    names: list[str]
    clip: torch.Tensor | None = None
    bias: torch.Tensor | None = None

    def __post_init__(self):
        if self.mapped.dim() != 3 or self.mapped.shape[1] != len(self.names):
            raise InputError(f"mapped contributions {list(self.mapped.shape)} do not fit {len(self.names)} names")
        if self.clip is not None and tuple(self.clip.shape) != (self.mapped.shape[0], self.mapped.shape[2]):
            raise InputError(f"CLIP embeddings {list(self.clip.shape)} do not pair with mapped contributions "
                             f"{list(self.mapped.shape)} (same images, same CLIP width needed)")
        self._index = {n: i for i, n in enumerate(self.names)}

    def __len__(self) -> int:
        return self.mapped.shape[0]

    @property
    def dim(self) -> int:
        return self.mapped.shape[2]

    def index(self, name: str | int) -> int:
        if isinstance(name, int):
            if not -len(self.names) <= name < len(self.names):
                raise UnknownComponentError(f"component index {name} out of range (0..{len(self.names) - 1})")
            return name % len(self.names)
        try:
            return self._index[name]
        except KeyError:
            raise UnknownComponentError(f"no component named {name!r} among the {len(self.names)} aligned") from None

    def component(self, name: str | int) -> torch.Tensor:
        """[N, d_clip] mapped contributions of one component."""
        return self.mapped[:, self.index(name)]

    def total(self) -> torch.Tensor:
        """[N, d_clip] the aligned image vectors Σ_i f_i(c_i(x)) + b."""
        out = self.mapped.sum(1)
        return out + self.bias if self.bias is not None else out

    def permute(self, order) -> Aligned:
        """The same data with components in another order (a list of names or indices)."""
        idx = [self.index(o) for o in order]
        if sorted(idx) != list(range(len(self.names))):
            raise InputError("permute() needs every component exactly once")
        return Aligned(self.mapped[:, idx], [self.names[i] for i in idx], self.clip, self.bias)
