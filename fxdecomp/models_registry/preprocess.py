"""Input size and eval preprocessing of a model, read from the conventions of
the libraries that build them (timm's pretrained config, open_clip's
``image_size``, a model's or its conv patch embedding's ``img_size``)."""
from __future__ import annotations

import torch

from .. import adapters
from ..errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def input_size_of(model: torch.nn.Module) -> tuple[int, int, int]:
    """(C, H, W) the model expects."""
    model = adapters.unwrap(model)
    if adapters.is_hf_model(model) and adapters.input_size(model) is not None:
        return adapters.input_size(model)
    chans = 3
    for attr in ("patch_embed", "stem", "conv1"):
        mod = getattr(model, attr, None)
        w = getattr(getattr(mod, "proj", mod), "weight", None)
        if isinstance(w, torch.Tensor) and w.dim() == 4:
            chans = w.shape[1]
            break
    for attr in ("patch_embed", "stem"):
        pe = getattr(model, attr, None)
        if pe is not None and getattr(pe, "img_size", None) is not None:
            return (chans, *_pair(pe.img_size))
    for attr in ("image_size", "img_size"):
        if getattr(model, attr, None) is not None:
            return (chans, *_pair(getattr(model, attr)))
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    if isinstance(cfg, dict) and cfg.get("input_size"):
        return tuple(cfg["input_size"])
    raise InputError(f"cannot tell the input size of {type(model).__name__}; pass input_size=(C, H, W) "
                     "(or example=images) to decompose()")


def normalization_of(model: torch.nn.Module) -> tuple[tuple, tuple]:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    if isinstance(cfg, dict) and "mean" in cfg:
        return tuple(cfg["mean"]), tuple(cfg["std"])
    mean = getattr(model, "image_mean", None)
    std = getattr(model, "image_std", None)
    if mean is not None and std is not None:
        return tuple(mean), tuple(std)
    return IMAGENET_MEAN, IMAGENET_STD


def transform_for(model: torch.nn.Module):
    """Eval preprocessing: uint8 or float [0, 1] images of any size -> model input tensors.

    Returns a callable on a [B, C, h, w] (or [C, h, w]) tensor: resizes the short side,
    centre-crops to the model's input size and normalises with the model's mean/std.
    """
    c, h, w = input_size_of(model)
    mean, std = normalization_of(model)
    mean_t = torch.tensor(mean).view(1, -1, 1, 1)
    std_t = torch.tensor(std).view(1, -1, 1, 1)

    def apply(images: torch.Tensor) -> torch.Tensor:
        x = images.unsqueeze(0) if images.dim() == 3 else images
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        if x.shape[1] != c:
            raise InputError(f"images have {x.shape[1]} channels; the model takes {c}")
        scale = max(h / x.shape[-2], w / x.shape[-1])
        size = (max(h, round(x.shape[-2] * scale)), max(w, round(x.shape[-1] * scale)))
        if size != tuple(x.shape[-2:]):
            x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
        x = x[..., top:top + h, left:left + w]
        return (x - mean_t.to(x)) / std_t.to(x)

    return apply
