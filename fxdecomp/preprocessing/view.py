"""A data set's images as a model saw them: its eval resize and crop applied to each item."""
from __future__ import annotations

import numpy as np
import torch

from .eval_transform import EvalTransform


class ModelView(torch.utils.data.Dataset):
    """Items of ``data`` with ``image`` through ``transform.resize_crop`` (uint8 at the model's input
    size); everything else (ids, labels, classes) is ``data``'s own. ``masks()``, where ``data``
    has them, go through the same resize and crop."""

    def __init__(self, data, transform: EvalTransform):
        self.data, self.transform = data, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        item = self.data[i]
        if isinstance(item, dict):
            return {**item, "image": self.transform.resize_crop(item["image"])}
        return self.transform.resize_crop(item)

    def _masks(self) -> np.ndarray:
        return np.stack([self.transform.mask(m).numpy() for m in self.data.masks()])

    def __getattr__(self, name):
        if name in ("data", "transform"):
            raise AttributeError(name)
        value = getattr(self.data, name)  # AttributeError where data has no such thing (so hasattr is honest)
        return self._masks if name == "masks" else value
