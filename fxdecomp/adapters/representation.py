"""The representation to align: a model's features, not its class logits.

CompAlign maps what a model *represents* into CLIP space; a classifier's logits
are one linear read-out of that, with far fewer dimensions. ``representation``
returns a model that stops before its classifier: a copy when one has to be cut off, the
model itself when it already stops there.
"""
from __future__ import annotations

import copy

import torch

from ..errors import InputError
from .expected_size import input_size_of
from . import select


def representation(model: torch.nn.Module) -> torch.nn.Module:
    """A model returning ``model``'s pre-logits features.

    timm models with a classifier: ``reset_classifier(0)`` on a deep copy, so the original is left
    untouched (ViT: the final-norm class token; Swin: the final norm, spatially averaged). Models
    that already return features (timm with ``num_classes=0``, open_clip image towers) are returned
    as they are, not copied: moving or converting the result moves or converts ``model`` itself.
    A model returning several tensors gives the one ``decompose`` takes by default
    (``fxdecomp.adapters``): a Hugging Face model's (its backbone's, for a classifier) image
    embedding, pooled output or class token; CoCa's pooled embedding, not its tokens.
    """
    from .. import adapters

    if isinstance(model, adapters.Selected):
        return model
    if adapters.is_hf_model(model):
        return _selected(getattr(model, "base_model", model))
    if getattr(model, "num_classes", None) == 0:
        return model
    if _is_open_clip_tower(model):
        return _selected(model) if getattr(model, "output_tokens", False) else model
    if callable(getattr(model, "reset_classifier", None)):
        rep = copy.deepcopy(model)
        rep.reset_classifier(0)
        return rep.eval()
    raise InputError(
        f"cannot find the classifier of {type(model).__name__} to cut off; pass a model whose forward "
        "returns its representation (e.g. timm.create_model(..., num_classes=0), an open_clip model.visual, "
        "or a wrapper module returning the pre-logits features)")


def _selected(model: torch.nn.Module) -> torch.nn.Module:
    if model.training:
        raise InputError(f"{type(model).__name__} is in training mode; call model.eval() first")
    param = next(iter(model.parameters()), None)
    dtype, device = (param.dtype, param.device) if param is not None else (torch.float32, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(2, *input_size_of(model), generator=gen, dtype=dtype).to(device)
    return select(model, example)


def _is_open_clip_tower(model: torch.nn.Module) -> bool:
    return type(model).__module__.startswith("open_clip") and hasattr(model, "output_dim")
