"""Batches: re-iterable (contributions, CLIP targets) pairs of the same images, from one of two backends.

CompAlign trains on more images than fit in memory by reading them a batch at a time, and
``materialise`` keeps every batch when they do fit. Both read the same interface, whatever holds the
images: ``ImageBatches`` decomposes raw images on the fly (each raw batch read once and handed to the
model and to CLIP, each through its own eval preprocessing, so the pairing cannot slip);
``RunBatches`` reads a run store shard by shard (memory holds one shard, not the run).
"""
from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator

import numpy as np
import torch

from ..checks import whole_number
from ..components import ComponentTable
from ..errors import InputError
from ..module import DecomposedModel
from ..store.run import Run
from .clip_space import ClipSpace
from .images import as_batch


class Batches(ABC):
    """Re-iterable (contributions [B, C, D], CLIP targets [B, d_clip] or None) pairs of the same images.

    ``iter()`` is one training pass (with a shuffle seed, each pass in a new seeded order); ``len()``
    counts a pass's batches; ``blocks()`` reads every image once in dataset order with the model's
    outputs, which is what ``materialise`` keeps. ``meta`` says what the contributions are of."""

    components: ComponentTable
    meta: dict

    @property
    def names(self) -> list[str]:
        return self.components.names

    @abstractmethod
    def __len__(self) -> int:
        """Batches in one pass."""

    @abstractmethod
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """One training pass: (contributions, CLIP targets) batches."""

    @abstractmethod
    def blocks(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]]:
        """(contributions, CLIP targets or None, the model's outputs) of every image once, in dataset order."""


# -- decomposing images on the fly ------------------------------------------------------------------
def _image_of(item):
    if isinstance(item, dict):
        if "image" not in item:
            raise InputError(f"dataset items are dicts without an 'image' key (keys: {sorted(item)})")
        return item["image"]
    if isinstance(item, (tuple, list)) and item and not isinstance(item[0], (int, float)):
        return item[0]
    return item


class _ImageReader:
    """Raw image batches [B, 3, H, W] from an array, a tensor, a dataset or an unshuffled DataLoader
    (a list of [3, H, W] images where a dataset's images differ in size, as image files do)."""

    def __init__(self, data):
        self.data = data
        self.loader = isinstance(data, torch.utils.data.DataLoader)
        if self.loader:
            sampler = getattr(data, "sampler", None)
            if not isinstance(sampler, torch.utils.data.SequentialSampler):
                raise InputError("the DataLoader does not read its dataset in order (shuffle=True or a custom "
                                 "sampler); contributions must stay in dataset order to be paired with labels "
                                 "and other models: use DataLoader(..., shuffle=False)")
        elif not (hasattr(data, "__len__") and hasattr(data, "__getitem__")):
            raise InputError(f"cannot read images from {type(data).__name__}: pass an array [N, H, W, 3], a tensor "
                             "[N, 3, H, W], an indexable dataset or a DataLoader with shuffle=False")

    def __len__(self) -> int:
        return len(self.data.dataset) if self.loader else len(self.data)

    def batches(self, batch_size: int, order: np.ndarray | None = None) -> Iterator[torch.Tensor]:
        if self.loader:
            if order is not None:
                raise InputError("a DataLoader cannot be re-ordered; pass its dataset to shuffle for training")
            for batch in self.data:
                yield as_batch(_image_of(batch))
            return
        n = len(self.data)
        idx = np.arange(n) if order is None else order
        arraylike = isinstance(self.data, (np.ndarray, torch.Tensor))
        for start in range(0, n, batch_size):
            sel = idx[start:start + batch_size]
            if arraylike:
                yield as_batch(self.data[sel] if order is not None else self.data[start:start + batch_size])
            else:
                images = [as_batch(_image_of(self.data[int(i)]))[0] for i in sel]
                if len({tuple(im.shape) for im in images}) > 1:
                    yield images  # files of several sizes: the model's EvalTransform resizes each
                else:
                    yield as_batch(images)

    def n_batches(self, batch_size: int) -> int:
        return len(self.data) if self.loader else -(-len(self) // batch_size)

    def first(self) -> torch.Tensor:
        return next(iter(self.batches(8)))


def _run_batch(dm: DecomposedModel, clip: ClipSpace | None, preprocess: Callable, raw: torch.Tensor, device):
    x = preprocess(raw).to(device=device, dtype=dm.dtype)  # on the host, where images are resized
    dec = dm(x)
    contributions = dec.contributions.detach()
    if contributions.dim() != 3:
        raise InputError(f"{dm.model_name}'s output is not one vector per image (contributions "
                         f"{list(contributions.shape)}); decompose a model returning [B, D] features, e.g. "
                         "fxdecomp.align.representation(model)")
    emb = clip.embed_preprocessed(clip.preprocess(raw).to(device)).detach() if clip is not None else None
    return contributions, emb, dec.output.detach()


class ImageBatches(Batches):
    """Batches computed on the fly by decomposing ``data`` with ``dm`` and embedding it with ``clip``.

    For training an aligner on more images than fit in memory. With ``shuffle_seed`` each pass reads
    the images in a new (seeded) order; contributions and CLIP embeddings still come from the very
    same images. ``source`` is the reader of raw image batches (arrays, datasets, DataLoaders).
    """

    def __init__(self, dm: DecomposedModel, data, *, preprocess: Callable, clip: ClipSpace | None,
                 batch_size: int = 32, device=None, shuffle_seed: int | None = None):
        whole_number("batch_size", batch_size)
        self.dm, self.clip, self.preprocess = dm, clip, preprocess
        self.source = _ImageReader(data)
        self.batch_size = batch_size
        self.device = torch.device(device) if device is not None else dm.device
        self.shuffle_seed = shuffle_seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.source.n_batches(self.batch_size)

    @property
    def components(self) -> ComponentTable:
        return self.dm.components

    @property
    def meta(self) -> dict:
        return {"model": self.dm.model_name, "granularity": self.dm.granularity,
                "clip": self.clip.name if self.clip else None}

    def __iter__(self):
        order = None
        if self.shuffle_seed is not None:
            order = np.random.default_rng([self.shuffle_seed, self.epoch]).permutation(len(self.source))
        self.epoch += 1
        for raw in self.source.batches(self.batch_size, order):
            with torch.no_grad():  # not around the yield: that would switch gradients off for the caller
                c, e, _ = _run_batch(self.dm, self.clip, self.preprocess, raw, self.device)
            yield c, e

    def blocks(self):
        for raw in self.source.batches(self.batch_size):
            with torch.no_grad():  # not around the yield, as above
                block = _run_batch(self.dm, self.clip, self.preprocess, raw, self.device)
            yield block


# -- reading a run store ------------------------------------------------------------------------------
class RunBatches(Batches):
    """Batches of a run store: shards in a seeded order, images shuffled inside each shard, so memory
    holds one shard, not the run. The targets are the run's embeddings by CLIP ``clip`` (None: none)."""

    def __init__(self, run: Run, clip: str | None, batch_size: int = 32, shuffle_seed: int | None = 0):
        whole_number("batch_size", batch_size)
        run.require_full("CompAlign's training data (a run's batches)")
        self.run, self.batch_size, self.seed = run, batch_size, shuffle_seed
        self.clip = clip
        self.targets = run.clip_embeddings(clip) if clip is not None else None
        self.components = run.components
        self.epoch = 0

    def __len__(self) -> int:
        return sum(-(-(stop - start) // self.batch_size) for start, stop in self.run.shard_ranges())

    @property
    def meta(self) -> dict:
        return {"model": self.run.model_name, "granularity": self.run.granularity, "clip": self.clip}

    def _targets(self, idx):
        return self.targets[idx] if self.targets is not None else None

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch]) if self.seed is not None else None
        self.epoch += 1
        ranges = self.run.shard_ranges()
        order = rng.permutation(len(ranges)) if rng is not None else range(len(ranges))
        for k in order:
            block = self.run.shard(int(k))
            start = ranges[int(k)][0]
            inner = rng.permutation(len(block)) if rng is not None else np.arange(len(block))
            for s in range(0, len(block), self.batch_size):
                sel = torch.as_tensor(inner[s:s + self.batch_size])
                yield block[sel], self._targets(start + sel)

    def blocks(self):
        for start, stop, dec in self.run.decompositions():
            yield dec.contributions, self._targets(slice(start, stop)), dec.output


# -- the names these had before there was one interface ---------------------------------------------
class Stream(ImageBatches):
    """``ImageBatches`` under its former name; deprecated, goes in the next release."""

    def __init__(self, *args, **kwargs):
        warnings.warn("fxdecomp.align.Stream is now fxdecomp.align.ImageBatches; the old name goes in the next "
                      "release", DeprecationWarning, stacklevel=2)
        super().__init__(*args, **kwargs)


class RunStream(RunBatches):
    """``RunBatches`` under its former name (``fxdecomp.store.RunStream``); deprecated, goes in the next release."""

    def __init__(self, *args, **kwargs):
        warnings.warn("RunStream is now fxdecomp.align.RunBatches (run_batches(run, clip) builds one); the old name "
                      "goes in the next release", DeprecationWarning, stacklevel=2)
        super().__init__(*args, **kwargs)
