"""Feeding a device: images decoded by DataLoader workers, in batches that never cross a shard
boundary, as pinned host tensors copied without blocking."""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial

import torch

from ..errors import InputError
from .shards import ShardPlan


class ShardBatches(torch.utils.data.Sampler):
    """Index batches of the given shards, in order; a shard is cut into batches from its own start."""

    def __init__(self, plan: ShardPlan, shards: Sequence[int], batch: int):
        self.plan, self.shards, self.batch = plan, list(shards), int(batch)

    def __iter__(self) -> Iterator[list[int]]:
        for i in self.shards:
            start, stop = self.plan.bounds(i)
            for s in range(start, stop, self.batch):
                yield list(range(s, min(stop, s + self.batch)))

    def __len__(self) -> int:
        return sum(-(-(b - a) // self.batch) for a, b in (self.plan.bounds(i) for i in self.shards))


def collate_images(items, transform: Callable | None = None) -> torch.Tensor:
    """A uint8 (or float) batch [B, 3, H, W] from items that are images or dicts with an ``image``,
    each first through ``transform`` (a model's resize and crop) if given."""
    images = [it["image"] if isinstance(it, dict) else it for it in items]
    if transform is not None:
        images = [transform(im) for im in images]
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) > 1:
        raise InputError(f"images of different sizes in one batch ({sorted(shapes)[:2]}): open folders with a "
                         "fixed size (fxdecomp.data.open_data(..., size=...)) or pass the model's transform")
    return torch.stack([torch.as_tensor(im) for im in images])


def loader(data, plan: ShardPlan, shards: Sequence[int], batch: int, *, workers: int = 0,
           pin: bool = False, transform: Callable | None = None) -> torch.utils.data.DataLoader:
    """Batches of the shards' images; ``transform`` (a model's resize and crop) runs on each image in
    the workers, where it was decoded."""
    return torch.utils.data.DataLoader(data, batch_sampler=ShardBatches(plan, shards, batch), num_workers=workers,
                                       collate_fn=partial(collate_images, transform=transform), pin_memory=pin,
                                       persistent_workers=False, prefetch_factor=4 if workers else None)
