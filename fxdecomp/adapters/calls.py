"""What a model returns, seen without computing it.

Choosing the output to decompose reads only the output's structure (its keys, which are tensors,
their shapes), so the model runs on fake tensors (``core.fake_run``); where it cannot, for real.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..core.fake_run import fake_call


def structure(model: torch.nn.Module, call: Callable, example: torch.Tensor):
    """``call(example)``: its tensors fake where fake execution serves, real otherwise."""
    ok, out = fake_call(model, call, example)
    if ok:
        return out
    with torch.no_grad():
        return call(example)
