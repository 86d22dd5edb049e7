"""Accuracy per group of a Waterbirds-style split, where a label and a spurious attribute disagree or agree."""
from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError


def group_accuracies(logits: torch.Tensor, targets, groups, n_groups: int | None = None) -> dict:
    """{"worst", "average", "groups": [accuracy per group]} of predictions ``logits.argmax(1)``.

    ``groups`` numbers each image's (label, spurious attribute) group; every group must have
    images, otherwise its accuracy, and so the worst group's, is not defined.
    """
    pred = torch.as_tensor(logits).argmax(1).cpu().numpy()
    targets, groups = np.asarray(targets), np.asarray(groups)
    if not (len(pred) == len(targets) == len(groups)):
        raise InputError(f"{len(pred)} predictions, {len(targets)} labels and {len(groups)} group ids")
    n = int(n_groups if n_groups is not None else groups.max() + 1)
    missing = [g for g in range(n) if not (groups == g).any()]
    if missing:
        raise InputError(f"group(s) {missing} have no images in this split: worst-group accuracy needs every "
                         "(label, spurious attribute) group present; use a split with all of them (e.g. a balanced "
                         "validation or test split)")
    correct = pred == targets
    accs = [float(correct[groups == g].mean()) for g in range(n)]
    return {"worst": min(accs), "average": float(np.mean(accs)), "groups": accs}
