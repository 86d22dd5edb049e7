"""A model whose forward returns several tensors, seen as one that returns the chosen one.

The model's own children, parameters and buffers are registered on the wrapper under their
own names (the model itself is held, not registered), so a traced graph's module paths are
the model's (``encoder.layer.3.attention``, not ``model.encoder.layer.3.attention``) and
component labels read as the model's own.
"""
from __future__ import annotations

from typing import Callable

import torch


class Selected(torch.nn.Module):
    """``forward(images)`` returns ``pick(call(model, images))``: one tensor of ``model``'s output.

    Attributes:
        wrapped: the model (its children are this module's children).
        output: the name of the chosen output (what ``decompose(..., output=...)`` takes).
        note: one line saying what is decomposed; ``decompose`` adds it to ``dm.notes``.
    """

    def __init__(self, model: torch.nn.Module, call: Callable, pick: Callable, output: str, note: str):
        super().__init__()
        object.__setattr__(self, "wrapped", model)  # not a submodule: its children are
        for name, child in model.named_children():
            self.add_module(name, child)
        for name, p in model.named_parameters(recurse=False):
            self.register_parameter(name, p)
        private = getattr(model, "_non_persistent_buffers_set", set())
        for name, b in model.named_buffers(recurse=False):
            self.register_buffer(name, b, persistent=name not in private)
        self._call, self._pick = call, pick
        self.output, self.note = output, note
        self.training = model.training

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._pick(self._call(self.wrapped, images))

    def train(self, mode: bool = True) -> Selected:
        self.wrapped.training = mode  # children follow through super(); the model's own flag too
        return super().train(mode)

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        # buffers of the model itself are replaced, not changed in place: give the model the new ones
        for name in list(self.wrapped._buffers):
            if name in self._buffers:
                self.wrapped._buffers[name] = self._buffers[name]
        return out

    def extra_repr(self) -> str:
        return f"{type(self.wrapped).__name__}, output={self.output!r}"
