"""Models that return more than one tensor, seen as models that return the one to decompose.

``select(model, example, output)`` returns ``model`` itself when its forward returns one tensor,
and otherwise a :class:`Selected` module returning the chosen output: a Hugging Face
``ModelOutput`` (``fxdecomp.adapters.hf``: ``image_embeds``, ``logits``, ``pooler``, ``cls``,
``mean``, ``last_hidden_state``) or a tuple (``fxdecomp.adapters.tuples``: open_clip's
``(pooled, tokens)``). The compiler calls it before tracing; nothing here knows the compiler.
"""
from __future__ import annotations

import torch

from ..errors import InputError
from .hf import OUTPUTS, input_size, is_hf_model, select_hf
from .selected import Selected
from .tuples import select_tuple

__all__ = ["OUTPUTS", "Selected", "input_size", "is_hf_model", "select", "unwrap"]


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model a :class:`Selected` holds (the model itself otherwise)."""
    return model.wrapped if isinstance(model, Selected) else model


def select(model: torch.nn.Module, example: torch.Tensor, output=None) -> torch.nn.Module:
    """``model``, or a module returning the output to decompose (see the package docstring)."""
    if model.training:  # running it would move BatchNorm statistics; the trace refuses it, saying why
        return model
    if isinstance(model, Selected):
        if output is not None and output != model.output:
            return select(model.wrapped, example, output)
        return model
    if is_hf_model(model):
        return select_hf(model, example, output)
    with torch.no_grad():  # one image: only what it returns is read (its structure, its shapes)
        out = model(example[:1])
    if isinstance(out, (tuple, list)):
        return select_tuple(model, tuple(out), output)
    if output is not None:
        raise InputError(f"{type(model).__name__} returns one tensor; output={output!r} applies only to models "
                         "that return several (transformers models, tuples)")
    return model
