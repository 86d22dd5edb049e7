"""How far a sum of contributions is from the model's output: one definition for every report of it
(a decomposition's ``error()``, a run's recorded error, the demo, the coverage benchmark)."""
from __future__ import annotations

import torch


def relative_errors(total: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """[B] ‖total − output‖ / ‖output‖ per image, in float64 on the tensors' device (an image whose output is
    zero divides by the smallest positive float64, so any difference there is huge, none is 0)."""
    b = output.shape[0]
    diff = (total.detach().double() - output.detach().double()).reshape(b, -1).norm(dim=1)
    ref = output.detach().double().reshape(b, -1).norm(dim=1)
    return diff / ref.clamp_min(torch.finfo(torch.float64).tiny)


def max_relative_error(total: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """The largest of ``relative_errors`` over the batch, a 0-d float64 tensor on the batch's device (no wait
    for the device: callers that accumulate it read it once at the end)."""
    return relative_errors(total, output).max()
