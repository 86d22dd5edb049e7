"""The standard protocol of the zero-shot segmentation experiment (Chefer et al.'s ImageNet-segmentation
evaluation, which the paper follows).

Each map is scaled to [0, 1] on its own image and thresholded at its own mean:
above is foreground. Pixel accuracy and the IoU of each class (background,
foreground) pool pixels over the whole set; mIoU averages the two IoUs. mAP is
the mean over images of the average precision of the soft map, scored as two
classes (1 − map for background, map for foreground).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the precision-recall curve as a step sum, Σ (R_n − R_{n−1}) P_n over distinct thresholds."""
    scores, labels = np.asarray(scores, np.float64).ravel(), np.asarray(labels, bool).ravel()
    if not labels.any():
        return 0.0
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # last index of each distinct score
    tp = np.cumsum(y)[last]
    precision = tp / (last + 1)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """Every map scaled to [0, 1] on its own (a constant map becomes 0)."""
    flat = maps.reshape(len(maps), -1).double()
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(1e-300)).reshape(maps.shape)


def to_size(maps: torch.Tensor, size) -> torch.Tensor:
    """[N, h, w] maps on a coarser grid resized to [N, H, W] (bilinear)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps.unsqueeze(1).double(), size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def foreground(maps: torch.Tensor, size) -> tuple[torch.Tensor, torch.Tensor]:
    """(soft, mask): maps [N, h, w] resized to ``size`` and scaled to [0, 1], and the foreground each
    thresholds at its own mean (the protocol's threshold)."""
    soft = normalise(to_size(maps.detach().cpu(), size))
    return soft, soft > soft.reshape(len(soft), -1).mean(1).view(-1, 1, 1)


def segmentation_scores(maps: torch.Tensor, masks) -> dict[str, float]:
    """{"pixel_acc", "miou", "map"} of heatmaps [N, h, w] (any grid, resized to the masks) against
    boolean foreground masks [N, H, W]."""
    masks = torch.as_tensor(np.asarray(masks)).bool()
    if masks.dim() != 3 or maps.dim() != 3 or len(maps) != len(masks):
        raise InputError(f"need maps [N, h, w] and masks [N, H, W] for the same images, got {list(maps.shape)} "
                         f"and {list(masks.shape)}")
    soft, pred = foreground(maps, masks.shape[-2:])
    correct = (pred == masks).sum().item()
    inter = [((~pred) & (~masks)).sum().item(), (pred & masks).sum().item()]
    union = [((~pred) | (~masks)).sum().item(), (pred | masks).sum().item()]
    ious = [i / u if u else 1.0 for i, u in zip(inter, union)]
    aps = []
    for s, m in zip(soft.numpy(), masks.numpy()):
        aps.append(average_precision(np.r_[1 - s.ravel(), s.ravel()], np.r_[~m.ravel(), m.ravel()]))
    return {"pixel_acc": correct / masks.numel(), "miou": float(np.mean(ious)), "map": float(np.mean(aps))}
