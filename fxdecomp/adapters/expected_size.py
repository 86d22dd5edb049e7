"""The (C, H, W) a model expects, from the conventions of the libraries that build them: a Hugging Face
model's config, a patch embedding's or the model's ``img_size``/``image_size``, timm's ``pretrained_cfg``.
The compiler needs it to trace; the eval preprocessing (``fxdecomp.preprocessing``) sizes images by it."""
from __future__ import annotations

import torch

from ..errors import InputError
from .hf import input_size, is_hf_model
from . import unwrap


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def input_size_of(model: torch.nn.Module) -> tuple[int, int, int]:
    """(C, H, W) the model expects."""
    model = unwrap(model)
    if is_hf_model(model) and input_size(model) is not None:
        return input_size(model)
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
