"""Data sets of the synthetic world: every image, mask, label and caption is a
pure function of (seed, index), so any split can be regenerated anywhere.

``World(n, seed)`` draws attributes freely. ``World(n, seed, spurious=0.95)``
is the Waterbirds-style split: the label is the object's shape family and the
background family (water or land) agrees with it with that probability;
``spurious=0.5`` gives exactly balanced groups.
"""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

from .attributes import BACKGROUNDS, CATEGORICAL, FAMILIES, LOCATION_FAMILY, SHAPE_FAMILY, Attributes, sample
from .captions import caption
from .render import render

#: Seeds of the fixed splits every shipped model was evaluated on.
EVAL_SEED = 20_241
TRAIN_SEED = 1
PROBE_SEED = 7
#: Images for the shipped aligners and the ground-truth benchmark: a split no shipped model was trained or
#: evaluated on.
ALIGN_SEED = 2
SPURIOUS_TRAIN_SEED = 11
SPURIOUS_VAL_SEED = 12
SPURIOUS_TEST_SEED = 13

#: Group index of (shape family, background) in the spurious split.
GROUPS = tuple((f, b) for f in FAMILIES for b in BACKGROUNDS)


class World(torch.utils.data.Dataset):
    """``n`` images; item ``i`` is a dict with ``image`` (float [3, H, W] in [0, 1]),
    ``mask`` (bool [H, W]), ``labels`` (attribute name -> class index), ``caption``,
    and for spurious splits ``target`` (shape family) and ``group``."""

    def __init__(self, n: int, seed: int = TRAIN_SEED, *, size: int = 64, spurious: float | None = None):
        self.n, self.seed, self.size, self.spurious = int(n), int(seed), int(size), spurious

    def __len__(self) -> int:
        return self.n

    def attributes(self, i: int) -> Attributes:
        if not 0 <= i < self.n:
            raise IndexError(i)
        rng = np.random.default_rng([self.seed, i])
        if self.spurious is None:
            return sample(rng, image_size=self.size)
        if self.spurious == 0.5:  # balanced: the groups take turns
            family, background = GROUPS[i % len(GROUPS)]
        else:
            family = FAMILIES[int(rng.integers(2))]
            agree = rng.random() < self.spurious
            background = BACKGROUNDS[FAMILIES.index(family) if agree else 1 - FAMILIES.index(family)]
        shapes = [s for s in CATEGORICAL["shape"] if SHAPE_FAMILY[s] == family]
        places = [p for p in CATEGORICAL["location"] if LOCATION_FAMILY[p] == background]
        return sample(rng, shape=str(rng.choice(shapes)), location=str(rng.choice(places)), image_size=self.size)

    def raw(self, i: int) -> tuple[Attributes, np.ndarray, np.ndarray, str]:
        """(attributes, image uint8 [H, W, 3], mask, caption) of item ``i``."""
        attrs = self.attributes(i)
        img, mask = render(attrs, self.size)
        return attrs, img, mask, caption(attrs, np.random.default_rng([self.seed, i, 1]))

    def __getitem__(self, i: int) -> dict:
        attrs, img, mask, text = self.raw(i)
        item = {
            "image": torch.from_numpy(img).permute(2, 0, 1).float() / 255.0,
            "mask": torch.from_numpy(mask),
            "labels": attrs.labels(),
            "caption": text,
            "index": i,
        }
        if self.spurious is not None:
            item["target"] = FAMILIES.index(attrs.family)
            item["group"] = GROUPS.index((attrs.family, attrs.background))
        return item

    def arrays(self, workers: int = 0, chunk: int = 512) -> dict:
        """The whole split as arrays: ``images`` uint8 [n, H, W, 3], ``masks``, one int array per
        label, ``captions`` (and ``target``/``group``) — rendered in parallel when ``workers``."""
        bounds = [(s, min(s + chunk, self.n)) for s in range(0, self.n, chunk)]
        if workers and len(bounds) > 1:
            with ProcessPoolExecutor(workers) as pool:
                parts = list(pool.map(_render_range, [self] * len(bounds), bounds))
        else:
            parts = [_render_range(self, b) for b in bounds]
        out: dict = {}
        for key in parts[0]:
            vals = [p[key] for p in parts]
            out[key] = sum(vals, []) if key == "captions" else np.concatenate(vals)
        return out


def _render_range(world: World, bounds: tuple[int, int]) -> dict:
    start, stop = bounds
    images, masks, caps = [], [], []
    labels: dict[str, list[int]] = {k: [] for k in CATEGORICAL}
    extra: dict[str, list[int]] = {"target": [], "group": []}
    for i in range(start, stop):
        attrs, img, mask, text = world.raw(i)
        images.append(img)
        masks.append(mask)
        caps.append(text)
        for k, v in attrs.labels().items():
            labels[k].append(v)
        if world.spurious is not None:
            extra["target"].append(FAMILIES.index(attrs.family))
            extra["group"].append(GROUPS.index((attrs.family, attrs.background)))
    out = {"images": np.stack(images), "masks": np.stack(masks), "captions": caps}
    out.update({k: np.asarray(v, dtype=np.int64) for k, v in labels.items()})
    if world.spurious is not None:
        out.update({k: np.asarray(v, dtype=np.int64) for k, v in extra.items()})
    return out
