"""The localisation baselines people use, on any model whose attention can be recorded.

* ``rollout`` (Abnar & Zuidema 2020): attention averaged over heads, the residual
  added as an identity, multiplied through the layers.
* ``chefer`` (Chefer, Gur & Wolf 2021, generic attention-model explainability):
  relevance R = I, updated layer by layer by R += mean_h(max(0, ∇A ⊙ A)) R, the
  gradients taken of the target score.
* ``gradcam``: Grad-CAM on the last attention layer, as in Chefer et al.'s ViT
  baselines: each head's map weighted by its mean gradient, summed, clamped at 0.

Maps come back on the first stage's grid (rollout, chefer) or the last stage's
grid (gradcam) as [B, rows, cols]. Between stages of a hierarchical model the
token spaces are joined by averaging (a patch merging); the readout is the class
token (``"cls"``) or the mean of the last stage's tokens (``"mean"``).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..components import Component
from ..errors import InputError
from .attention import AttentionRecorder
from .geometry import Stage, attention_stages, dense, merge_matrix

READOUTS = ("cls", "mean")
BASELINES = ("rollout", "chefer", "gradcam")


def readout_of(model: torch.nn.Module, stages: Sequence[Stage]) -> str:
    """How the model reads its last tokens: its pooling attribute if it says, else the class token when there is one."""
    pool = getattr(model, "global_pool", None) or getattr(model, "pool_type", None)
    if isinstance(pool, str):
        if pool in ("token", "tok", "cls"):
            return "cls"
        if pool in ("avg", "mean", "avgmax", "fast_avg"):
            return "mean"
    return "cls" if stages[-1].prefixes else "mean"


def record(model: torch.nn.Module, images: torch.Tensor, stages: Sequence[Stage], direction=None):
    """Run the model once; ([B, heads, T, T] probabilities per stage, their gradients of
    Σ_b ⟨output_b, direction_b⟩ or None)."""
    grads = direction is not None
    x = images.detach().clone().requires_grad_(True)  # keeps fused fast paths off, so attention is explicit
    with torch.enable_grad(), AttentionRecorder(grads=grads) as rec:
        out = model(x)
    if len(rec) != len(stages):
        raise InputError(f"recorded {len(rec)} attention maps but the decomposition has {len(stages)} attention "
                         "branches split by token: these baselines need every attention layer to be a branch of "
                         "the residual stream, read one by one")
    batch = images.shape[0]
    maps = [dense(m.double(), s, batch) for m, s in zip(rec.maps(), stages)]
    if not grads:
        return maps, None
    d = torch.as_tensor(direction, device=out.device).to(out.dtype)
    d = d.expand_as(out) if d.dim() == 1 else d
    if d.shape != out.shape:
        raise InputError(f"direction {list(d.shape)} does not fit the model's output {list(out.shape)}")
    (out * d).sum().backward()
    return maps, [dense(g.double(), s, batch) for g, s in zip(rec.grads(), stages)]


def _propagate(stages: Sequence[Stage], layer_maps: Sequence, update, batch: int) -> torch.Tensor:
    """Relevance [B, T_last, T_first]: R starts as I and goes through ``update(R, layer_map)`` per layer and a
    merge matrix wherever the token space changes."""
    r = torch.eye(stages[0].size, dtype=torch.float64).expand(batch, -1, -1).clone()
    prev = stages[0]
    for stage, a in zip(stages, layer_maps):
        if stage.size != prev.size or stage.grid != prev.grid:
            r = merge_matrix(prev, stage) @ r
        r = update(r, a)
        prev = stage
    return r


def _read(r: torch.Tensor, stages: Sequence[Stage], readout: str) -> torch.Tensor:
    """[B, rows, cols] of the first stage: the readout's row(s) of the relevance, at the input's cells."""
    if readout not in READOUTS:
        raise InputError(f"readout must be one of {READOUTS}, got {readout!r}")
    last, first = stages[-1], stages[0]
    if readout == "cls":
        if not last.prefixes:
            raise InputError("readout='cls' but the last attention layer has no class token; use readout='mean'")
        row = r[:, 0]
    else:
        row = r[:, last.cells].mean(1)
    return row[:, first.cells].reshape(-1, *first.grid)


def _rollout(stages, maps, grads, readout: str, batch: int) -> torch.Tensor:
    def update(r, a):
        mixed = 0.5 * a.mean(1) + 0.5 * torch.eye(a.shape[-1], dtype=a.dtype)
        return mixed / mixed.sum(-1, keepdim=True).clamp_min(1e-12) @ r

    return _read(_propagate(stages, maps, update, batch), stages, readout)


def _chefer(stages, maps, grads, readout: str, batch: int) -> torch.Tensor:
    def update(r, ag):
        a, g = ag
        return r + (g * a).clamp_min(0).mean(1) @ r

    return _read(_propagate(stages, list(zip(maps, grads)), update, batch), stages, readout)


def _gradcam(stages, maps, grads, readout: str, batch: int) -> torch.Tensor:
    if readout not in READOUTS:
        raise InputError(f"readout must be one of {READOUTS}, got {readout!r}")
    last, a = stages[-1], maps[-1]
    rows = [0] if readout == "cls" else list(range(last.cells.start, last.size))
    a_read = a[:, :, rows][:, :, :, last.cells]  # [B, heads, rows, cells]
    weight = grads[-1][:, :, rows][:, :, :, last.cells].mean(dim=(2, 3), keepdim=True)
    cam = (a_read * weight).mean(2).mean(1).clamp_min(0)
    return cam.reshape(-1, *last.grid)


_FROM_RECORDING = {"rollout": _rollout, "chefer": _chefer, "gradcam": _gradcam}


def baselines(names: Sequence[str], model, images, components: Sequence[Component], direction=None,
              readout: str | None = None) -> dict[str, torch.Tensor]:
    """{name: maps} for several of ``BASELINES`` from one recorded forward (and one backward, when a
    gradient-based one is asked for: ``direction`` is then needed)."""
    bad = [n for n in names if n not in BASELINES]
    if bad:
        raise InputError(f"unknown baseline(s) {bad}; use {BASELINES}")
    gradients = [n for n in names if n != "rollout"]
    if gradients and direction is None:
        raise InputError(f"{gradients[0]} needs a direction of the model's output to explain (e.g. the one-hot of "
                         "each image's class)")
    stages = attention_stages(components)
    if gradients:
        maps, grads = record(model, images, stages, direction)
    else:
        with torch.no_grad():
            maps, grads = record(model, images, stages)
    maps = [m.detach() for m in maps]
    readout = readout or readout_of(model, stages)
    return {n: _FROM_RECORDING[n](stages, maps, grads, readout, len(images)) for n in names}


def rollout(model, images, components: Sequence[Component], readout: str | None = None) -> torch.Tensor:
    return baselines(["rollout"], model, images, components, readout=readout)["rollout"]


def chefer(model, images, components: Sequence[Component], direction, readout: str | None = None) -> torch.Tensor:
    return baselines(["chefer"], model, images, components, direction, readout)["chefer"]


def gradcam(model, images, components: Sequence[Component], direction, readout: str | None = None) -> torch.Tensor:
    return baselines(["gradcam"], model, images, components, direction, readout)["gradcam"]


def baseline(name: str, model, images, components, direction=None, readout: str | None = None) -> torch.Tensor:
    """One of ``BASELINES`` by name (``direction`` is needed by the gradient-based ones)."""
    return baselines([name], model, images, components, direction, readout)[name]
