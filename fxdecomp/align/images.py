"""One layout for raw images, so a batch can be handed to several preprocessings.

Raw images arrive as uint8 arrays [N, H, W, 3] (the world's ``arrays()``), torch
tensors [N, 3, H, W] (uint8, or float in [0, 1]) or single images. Every model
and every CLIP tower then applies its *own* eval preprocessing to the same
[B, 3, H, W] batch, which is what keeps their outputs paired image by image.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError


def as_batch(images) -> torch.Tensor:
    """uint8 or float [0, 1] tensor [B, 3, H, W] from any of the accepted layouts."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    elif isinstance(images, (list, tuple)):
        if not images:
            raise InputError("got an empty list of images")
        images = torch.stack([as_batch(im)[0] for im in images])
    if not isinstance(images, torch.Tensor):
        raise InputError(f"expected images as a numpy array or torch tensor, got {type(images).__name__}")
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4:
        raise InputError(f"expected images [N, H, W, 3] or [N, 3, H, W], got shape {list(images.shape)}")
    if images.shape[1] != 3 and images.shape[-1] == 3:
        images = images.permute(0, 3, 1, 2)
    if images.shape[1] != 3:
        raise InputError(f"expected 3-channel images, got shape {list(images.shape)}")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise InputError(f"raw images must be uint8 or float in [0, 1], got {images.dtype}")
    return images


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """A raw batch as float32 in [0, 1]."""
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
