"""Feeding a device: images decoded by DataLoader workers, in batches that never cross a shard
boundary, as pinned host tensors copied without blocking; each batch comes with its images' digests.

An ``FxDecompError`` raised in a worker (an unreadable image) comes back as that error with its own
message: the DataLoader would otherwise re-raise it as "Caught InputError in DataLoader worker
process 0" followed by the worker's traceback.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import torch

from ..errors import FxDecompError, InputError
from .shards import ShardPlan


class Batch(NamedTuple):
    images: torch.Tensor
    #: each image's content digest (``fxdecomp.data.identity``), None where the data set gives none
    digests: list


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


def collate_images(items, transform: Callable | None = None) -> Batch:
    """A uint8 (or float) batch [B, 3, H, W] from items that are images or dicts with an ``image``,
    each first through ``transform`` (a model's resize and crop) if given."""
    images = [it["image"] if isinstance(it, dict) else it for it in items]
    if transform is not None:
        images = [transform(im) for im in images]
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) > 1:
        raise InputError(f"images of different sizes in one batch ({sorted(shapes)[:2]}): open folders with a "
                         "fixed size (fxdecomp.data.open_data(..., size=...)) or pass the model's transform")
    digests = [it.get("digest") if isinstance(it, dict) else None for it in items]
    return Batch(torch.stack([torch.as_tensor(im) for im in images]), digests)


class _Failed:
    """An error raised while a worker made a batch, carried back to the main process as data."""

    def __init__(self, err: FxDecompError):
        self.kind, self.message = type(err), str(err)


class _Fetch:
    """The dataset's items for one batch of indices, collated; our own errors are returned, not raised."""

    def __init__(self, data, transform: Callable | None = None):
        self.data, self.transform = data, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, indices):
        try:
            return collate_images([self.data[i] for i in indices], self.transform)
        except FxDecompError as err:
            return _Failed(err)


class Feed:
    """Iterates ``Batch``es; an error a worker met is raised here, as itself."""

    def __init__(self, loader: torch.utils.data.DataLoader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        for item in self.loader:
            if isinstance(item, _Failed):
                raise _rebuilt(item)
            yield item


def _rebuilt(failed: _Failed) -> FxDecompError:
    try:
        return failed.kind(failed.message)
    except Exception:  # noqa: BLE001 - an error type with another constructor
        return InputError(failed.message)


def loader(data, plan: ShardPlan, shards: Sequence[int], batch: int, *, workers: int = 0,
           pin: bool = False, transform: Callable | None = None) -> Feed:
    """Batches of ``data`` for the shards ``shards`` of ``plan``, decoded by ``workers`` processes;
    ``transform`` (a model's resize and crop) runs on each image in the workers, where it was decoded."""
    # each sampled index list is one dataset "item", so the whole batch is made (and fails) in one worker
    return Feed(torch.utils.data.DataLoader(_Fetch(data, transform), sampler=ShardBatches(plan, shards, batch),
                                            batch_size=None, num_workers=workers, collate_fn=_identity,
                                            pin_memory=pin, persistent_workers=False,
                                            prefetch_factor=4 if workers else None))


def _identity(batch):
    return batch
