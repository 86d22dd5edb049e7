"""Removing a spurious feature: mean-ablate the top-k components of a ranking, with k chosen on a
validation split, and report worst-group and average accuracy on a test split.

Means come from the training split (taking them from the split being evaluated
would leak it), k from the validation split (never the test split). The same k
is used for the baselines: as many random components (mean over draws) and the
oracle ranking when one is given.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import InputError
from ..figure import finish, pyplot
from .ablation import component_means, mean_ablate
from .groups import group_accuracies
from .ranking import random_rankings


@dataclass
class Split:
    """A classifier's decomposed logits [N, C, classes] on one split, with labels and group ids."""

    contributions: torch.Tensor
    targets: np.ndarray
    groups: np.ndarray

    def __post_init__(self):
        self.targets, self.groups = np.asarray(self.targets), np.asarray(self.groups)
        if self.contributions.dim() != 3 or not (len(self.contributions) == len(self.targets) == len(self.groups)):
            raise InputError(f"a split needs contributions [N, C, classes] with N labels and group ids; got "
                             f"{list(self.contributions.shape)}, {len(self.targets)} labels, {len(self.groups)} groups")


@dataclass
class Removal:
    """What ``remove_spurious`` found; ``table()`` prints it, ``figure()`` draws worst-group accuracy against k."""

    k: int
    ablated: list[str]
    before: dict
    after: dict
    random_after: dict
    oracle_after: dict | None
    curves: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """The figures the benchmark's JSON records."""
        return {"worst_before": self.before["worst"], "worst_after": self.after["worst"],
               "avg_before": self.before["average"], "avg_after": self.after["average"],
               "random_worst_after": self.random_after["worst"], "random_avg_after": self.random_after["average"],
               "oracle_worst_after": self.oracle_after["worst"] if self.oracle_after else None,
               "oracle_avg_after": self.oracle_after["average"] if self.oracle_after else None, "k": self.k}

    def table(self) -> str:
        rows = [("before", self.before), (f"top-{self.k} by score, ablated", self.after),
                (f"{self.k} random components (mean of draws)", self.random_after)]
        if self.oracle_after:
            rows.append((f"top-{self.k} by readout effect (oracle)", self.oracle_after))
        width = max(len(r[0]) for r in rows)
        lines = [f"{'':<{width}}  worst-group  average"]
        lines += [f"{name:<{width}}  {acc['worst']:>11.3f}  {acc['average']:>7.3f}" for name, acc in rows]
        return "\n".join(lines)

    def figure(self, path=None, title: str = ""):
        plt = pyplot()

        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
        for ax, split in zip(axes, ("validation", "test")):
            for name, ys in self.curves.get(split, {}).items():
                ax.plot(range(len(ys)), ys, marker=".", label=name)
            ax.axvline(self.k, color="grey", ls=":", lw=1)
            ax.set_xlabel("components mean-ablated (k)")
            ax.set_ylabel("worst-group accuracy")
            ax.set_title(f"{split} split" + (" (k chosen here)" if split == "validation" else ""), fontsize=9)
            ax.legend(fontsize=7)
        return finish(fig, title, path, dpi=110)


def _accuracy(split: Split, means, indices) -> dict:
    return group_accuracies(mean_ablate(split.contributions, means, indices), split.targets, split.groups)


def remove_spurious(names: Sequence[str], ranking: Sequence[str], train: Split, validation: Split, test: Split, *,
                    max_k: int = 20, random_draws: int = 20, oracle: Sequence[str] | None = None,
                    seed: int = 0) -> Removal:
    """Mean-ablate the top-k of ``ranking`` (component names among ``names``, the splits' component order).

    k runs over 0..``max_k`` and is the one with the best validation worst-group accuracy (the
    smallest such k on ties). Random draws are taken among the ranked components.
    """
    names = list(names)
    index = {n: i for i, n in enumerate(names)}
    unknown = [n for n in list(ranking) + list(oracle or []) if n not in index]
    if unknown:
        raise InputError(f"ranked components {unknown[:3]} are not components of the classifier's decomposition: "
                         "rank the components of the same model at the same granularity")
    for split in (train, validation, test):
        if split.contributions.shape[1] != len(names):
            raise InputError(f"a split has {split.contributions.shape[1]} components but {len(names)} names")
    max_k = min(max_k, len(ranking))
    means = component_means(train.contributions)
    ids = [index[n] for n in ranking]
    val_curve = [_accuracy(validation, means, ids[:k]) for k in range(max_k + 1)]
    k = int(np.argmax([a["worst"] for a in val_curve]))  # first of the best: the smallest k
    draws = [[index[n] for n in r] for r in random_rankings(list(ranking), random_draws, seed)]

    def random_at(split, kk):
        accs = [_accuracy(split, means, d[:kk]) for d in draws]
        return {"worst": float(np.mean([a["worst"] for a in accs])),
                "average": float(np.mean([a["average"] for a in accs]))}

    oracle_ids = [index[n] for n in oracle] if oracle is not None else None
    ks = range(max_k + 1)
    test_curve = [_accuracy(test, means, ids[:kk]) for kk in ks]
    random_test = [random_at(test, kk) for kk in ks]
    curves: dict = {"validation": {"score": [a["worst"] for a in val_curve],
                                   "random (mean)": [random_at(validation, kk)["worst"] for kk in ks]},
                    "test": {"score": [a["worst"] for a in test_curve],
                             "random (mean)": [a["worst"] for a in random_test]}}
    oracle_test = None
    if oracle_ids is not None:
        curves["validation"]["oracle"] = [_accuracy(validation, means, oracle_ids[:kk])["worst"] for kk in ks]
        oracle_test = [_accuracy(test, means, oracle_ids[:kk]) for kk in ks]
        curves["test"]["oracle"] = [a["worst"] for a in oracle_test]
    # the table's figures are points of the test curves (k <= max_k)
    return Removal(k=k, ablated=list(ranking[:k]), before=test_curve[0], after=test_curve[k],
                   random_after=random_test[k], oracle_after=oracle_test[k] if oracle_test is not None else None,
                   curves=curves)
