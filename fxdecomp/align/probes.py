"""Ground truth for the synthetic world: what a component's raw contributions actually encode.

These read the *unaligned* contributions, so they judge descriptions and scores
without trusting any aligner or CLIP. Every statistic is fitted on one split and
measured on another.
"""
from __future__ import annotations

import numpy as np
import torch

from .scores import rankdata


def auc(scores, positive) -> float:
    """Area under the ROC curve (Mann–Whitney, ties counted half); 0.5 when a class is empty."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positive = np.asarray(positive, dtype=bool).ravel()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return 0.5
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def value_aucs(train: torch.Tensor, train_labels, test: torch.Tensor, test_labels, n_values: int) -> np.ndarray:
    """[C, n_values]: how well each component separates each attribute value from the rest.

    For component i and value v, the direction μ_v − μ_rest of its contributions is taken
    from the training split (class-mean separability: a one-vs-rest linear read-out
    with no fitted weights to overfit); the AUC of the held-out contributions projected on it
    says whether the value really moves what the component writes. 0.5 is chance.
    """
    train, test = train.double(), test.double()
    ytr, yte = np.asarray(train_labels), np.asarray(test_labels)
    out = np.full((train.shape[1], n_values), 0.5)
    for v in range(n_values):
        pos = torch.as_tensor(ytr == v)
        if pos.all() or not pos.any():
            continue
        direction = train[pos].mean(0) - train[~pos].mean(0)  # [C, D]
        proj = torch.einsum("ncd,cd->nc", test, direction).numpy()
        for i in range(proj.shape[1]):
            out[i, v] = auc(proj[:, i], yte == v)
    return out


def probe_accuracy(train_x: torch.Tensor, train_y, test_x: torch.Tensor, test_y, n_classes: int | None = None, *,
                   weight_decay: float = 1e-3, max_iter: int = 200) -> float:
    """Held-out accuracy of a multinomial logistic-regression probe fitted on the training split
    (features standardised with training statistics; L2 penalty ``weight_decay``; L-BFGS)."""
    xtr = train_x.reshape(len(train_x), -1).double()
    xte = test_x.reshape(len(test_x), -1).double()
    ytr = torch.as_tensor(np.asarray(train_y), dtype=torch.long)
    yte = torch.as_tensor(np.asarray(test_y), dtype=torch.long)
    k = int(n_classes if n_classes is not None else max(int(ytr.max()), int(yte.max())) + 1)
    mean, std = xtr.mean(0), xtr.std(0)
    std = torch.where(std > 1e-12 * std.max().clamp_min(1e-300), std, torch.ones_like(std))
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    w = torch.zeros(xtr.shape[1], k, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-9)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xtr @ w + b, ytr) + weight_decay * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(((xte @ w + b).argmax(1) == yte).double().mean())
