"""Preprocessing as the model was trained: one path for resizing images, the model's library's own.

Every resize and crop fxdecomp does is an :class:`EvalTransform`: timm's ``create_transform``
from ``resolve_model_data_config``, open_clip's eval transform from the tower's
``preprocess_cfg``, or a Hugging Face image processor (PIL backend) from its
``preprocessor_config.json``, applied once to each decoded image. ``square(size)`` (a data
source's fixed square size) is timm's transform too. Which one a model gets is decided by
``transform_for(model)`` (``for_model``, with the input size the model expects).
"""
from __future__ import annotations

from functools import lru_cache

from .eval_transform import APPLIED, EvalTransform
from .for_model import input_size_of, normalization_of, transform_for
from .libraries import LIBRARIES
from .view import ModelView

__all__ = ["APPLIED", "EvalTransform", "LIBRARIES", "ModelView", "input_size_of", "normalization_of", "square",
           "transform_for"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@lru_cache(maxsize=8)
def square(size: int, interpolation: str = "bicubic") -> EvalTransform:
    """Short side resized to ``size`` and the centre cropped to ``size`` × ``size`` (timm's eval
    transform with ``crop_pct=1``): what a data source opened with a fixed ``size`` does."""
    config = {"input_size": (3, int(size), int(size)), "interpolation": interpolation, "crop_pct": 1.0,
              "crop_mode": "center", "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    return EvalTransform("timm", config, f"a square of {size} pixels", (3, int(size), int(size)), IMAGENET_MEAN,
                         IMAGENET_STD)
