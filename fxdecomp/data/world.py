"""Images of the synthetic world as a data source: ``world:N[:SEED]``."""
from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError
from ..world.attributes import BACKGROUNDS, CATEGORICAL, FAMILIES
from ..world.dataset import EVAL_SEED, World
from .identity import pixels_digest
from .registry import SourceType, register_source

DEFAULT_SEED = EVAL_SEED


def parse_world(spec: str) -> tuple[int, int]:
    parts = spec.split(":")
    try:
        n = int(parts[1])
        seed = int(parts[2]) if len(parts) > 2 else DEFAULT_SEED
    except (IndexError, ValueError):
        raise InputError(f"bad world data {spec!r}: write world:N or world:N:SEED, e.g. world:500:3") from None
    if len(parts) > 3:
        raise InputError(f"bad world data {spec!r}: write world:N or world:N:SEED")
    return n, seed


class WorldImages(torch.utils.data.Dataset):
    """World(n, seed) with uint8 images; labels are every attribute's value index (and the masks)."""

    def __init__(self, n: int, seed: int = DEFAULT_SEED):
        if n <= 0:
            raise InputError(f"world:N needs N >= 1, got {n}")
        self.world = World(n, seed)
        self.n, self.seed = int(n), int(seed)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        attrs, img, mask, text = self.world.raw(i)
        return {"image": torch.from_numpy(img).permute(2, 0, 1).contiguous(), "digest": pixels_digest(img),
                "mask": torch.from_numpy(mask), "labels": attrs.labels(), "caption": text, "index": i}

    def digest(self, i: int) -> str:
        """The digest of image ``i``'s pixels: a rendering that changed (another version) is another image."""
        return pixels_digest(self.world.raw(i)[1])

    def ids(self) -> list[str]:
        return [f"world:{self.seed}:{i}" for i in range(self.n)]

    def labels(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {k: [] for k in CATEGORICAL}
        for i in range(self.n):
            for k, v in self.world.attributes(i).labels().items():
                out[k].append(v)
        return out

    def masks(self) -> np.ndarray:
        return np.stack([self.world.raw(i)[2] for i in range(self.n)])


class WorldSpurious(torch.utils.data.Dataset):
    """A Waterbirds-style world split, World(n, seed, spurious=p), in the Waterbirds fields:
    ``target`` (shape family), ``place`` (background family: 0 water, 1 land), ``group`` = 2 target + place."""

    def __init__(self, n: int, seed: int, spurious: float):
        self.world = World(n, seed, spurious=spurious)
        self.n = int(n)
        attrs = [self.world.attributes(i) for i in range(self.n)]
        self.targets = np.array([FAMILIES.index(a.family) for a in attrs])
        self.places = np.array([BACKGROUNDS.index(a.background) for a in attrs])
        self.groups = 2 * self.targets + self.places

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        _, img, _, _ = self.world.raw(i)
        return {"image": torch.from_numpy(img).permute(2, 0, 1).contiguous(), "target": int(self.targets[i]),
                "place": int(self.places[i]), "group": int(self.groups[i]), "index": i}


register_source(SourceType(
    "world", WorldImages, names=lambda spec: spec.startswith("world:"),
    open=lambda spec, size, split: WorldImages(*parse_world(spec)),
    describe=lambda data: {"n": data.n, "seed": data.seed, "ids": data.ids(), "labels": data.labels()},
    reopen=lambda rec: WorldImages(rec["n"], rec["seed"]), priority=0))
