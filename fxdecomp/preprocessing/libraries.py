"""The resize and crop of each library's eval transform, built by the library from its own config.

* ``timm``: ``timm.data.create_transform(**config)``, the config being what
  ``resolve_model_data_config`` reads from the model (``crop_pct``, ``crop_mode``, ``interpolation``);
* ``open_clip``: ``open_clip.image_transform(**config, is_train=False)`` (``resize_mode``,
  ``interpolation``), the config being the tower's ``preprocess_cfg``;
* ``transformers``: the image processor the config names, on its PIL backend (the one that
  reproduces how the models were trained and evaluated), with its rescale and normalisation off.

Each returns the geometric part only (everything before the library's to-tensor step); the
normalisation is done on the batch (``EvalTransform.normalize``), in the library's arithmetic.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..errors import InputError

LIBRARIES = ("timm", "open_clip", "transformers")
_TO_TENSOR = ("ToTensor", "MaybeToTensor", "PILToTensor")


def _before_to_tensor(compose, library: str):
    """The transforms of ``compose`` before its to-tensor step, checked to be followed only by
    to-tensor and ``Normalize`` (the part done on the batch)."""
    from torchvision import transforms

    steps = list(compose.transforms)
    names = [type(t).__name__ for t in steps]
    cut = next((i for i, n in enumerate(names) if n in _TO_TENSOR), None)
    if cut is None or names[cut + 1:] != ["Normalize"]:
        raise InputError(f"{library}'s eval transform is {names}: fxdecomp splits it at to-tensor + Normalize and "
                         "cannot here; pass preprocess=... (your own callable) instead")
    return transforms.Compose(steps[:cut])


def timm_geometry(config: dict):
    from timm.data import create_transform

    return _before_to_tensor(create_transform(**config, is_training=False), "timm")


def open_clip_geometry(config: dict):
    from open_clip import image_transform

    return _before_to_tensor(image_transform(**config, is_train=False), "open_clip")


def transformers_processor(config: dict):
    """The PIL-backend image processor of ``config`` (a ``preprocessor_config.json``)."""
    try:
        import transformers
    except ImportError:
        raise InputError('this model\'s preprocessing is a transformers image processor: pip install -e ".[hf]"') \
            from None
    kind = config.get("image_processor_type")
    cls = getattr(transformers, f"{kind}Pil", None) or getattr(transformers, str(kind), None)
    if cls is None:
        raise InputError(f"transformers {transformers.__version__} has no image processor {kind!r}")
    return cls.from_dict({k: v for k, v in config.items() if k != "image_processor_type"})


class ProcessorGeometry:
    """An HF image processor's resize and crop (rescale and normalisation off): PIL image -> uint8 [C, H, W]."""

    def __init__(self, config: dict):
        self.config = config
        self.processor = transformers_processor(config)

    def __call__(self, image):
        out = self.processor(images=[image], do_rescale=False, do_normalize=False, return_tensors=None)
        arr = np.asarray(out["pixel_values"][0])
        if arr.dtype != np.uint8:  # a float image given: the processor keeps its float values
            return torch.from_numpy(arr.astype(np.float32))
        return torch.from_numpy(arr.copy())

    def __repr__(self) -> str:
        return f"{type(self.processor).__name__}(do_rescale=False, do_normalize=False)"


def geometry(library: str, config: dict) -> Callable:
    if library == "timm":
        return timm_geometry(config)
    if library == "open_clip":
        return open_clip_geometry(config)
    if library == "transformers":
        return ProcessorGeometry(config)
    raise InputError(f"unknown preprocessing library {library!r}; one of {LIBRARIES}")
