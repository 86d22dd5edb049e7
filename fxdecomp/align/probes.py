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


def fit_probe(train_x: torch.Tensor, train_y, n_classes: int | None = None, *, weight_decay: float = 1e-3,
              max_iter: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """A multinomial logistic-regression probe (W [F, K], b [K]) on raw features [N, F] (or [N, ...],
    flattened): fitted on standardised features (training statistics; L2 penalty ``weight_decay``;
    L-BFGS), the standardisation then folded into W and b."""
    xtr = train_x.reshape(len(train_x), -1).double()
    ytr = torch.as_tensor(np.asarray(train_y), dtype=torch.long)
    k = int(n_classes if n_classes is not None else int(ytr.max()) + 1)
    mean, std = xtr.mean(0), xtr.std(0)
    std = torch.where(std > 1e-12 * std.max().clamp_min(1e-300), std, torch.ones_like(std))
    z = (xtr - mean) / std
    w = torch.zeros(z.shape[1], k, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-9)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z @ w + b, ytr) + weight_decay * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        w_raw = w / std.unsqueeze(1)
        return w_raw, b - mean @ w_raw


def probe_accuracy(train_x: torch.Tensor, train_y, test_x: torch.Tensor, test_y, n_classes: int | None = None, *,
                   weight_decay: float = 1e-3, max_iter: int = 200) -> float:
    """Held-out accuracy of a :func:`fit_probe` probe fitted on the training split."""
    yte = torch.as_tensor(np.asarray(test_y), dtype=torch.long)
    if n_classes is None:
        n_classes = max(int(np.max(np.asarray(train_y))), int(yte.max())) + 1
    w, b = fit_probe(train_x, train_y, n_classes, weight_decay=weight_decay, max_iter=max_iter)
    xte = test_x.reshape(len(test_x), -1).double()
    return float(((xte @ w + b).argmax(1) == yte).double().mean())


def readout_effects(train: torch.Tensor, train_labels, test: torch.Tensor, test_labels, n_classes: int | None = None,
                    **probe) -> np.ndarray:
    """[C]: each component's exact direct effect on a linear readout of an attribute.

    A probe (W, b) is fitted on the whole representation Σ_i c_i of the training split
    ([N, C, D] contributions); on held-out images, component i's effect on the probe's
    true-class margin under mean-ablation is
    e_i = E_x[(W_y(x) − mean_k W_k) · (c_i(x) − c̄_i)], c̄_i its training-split mean.
    The effects add up: Σ_i e_i is the effect of mean-ablating every component at once.
    """
    train, test = train.double(), test.double()
    w, _ = fit_probe(train.sum(1), train_labels, n_classes, **probe)  # [D, K]
    margin = w - w.mean(1, keepdim=True)  # column y: W_y − mean_k W_k
    y = torch.as_tensor(np.asarray(test_labels), dtype=torch.long)
    centred = test - train.mean(0)  # [N, C, D]
    return torch.einsum("ncd,nd->nc", centred, margin.T[y]).mean(0).numpy()
