"""The spurious-feature experiment over a run store of a Waterbirds-layout folder.

The run holds the representation's components; its classifier (``head.safetensors``) is
linear, so each component's logit contribution is its contribution times the classifier's
weights, and the classifier's bias is one more (constant) component.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..align.runs import run_shared_aligner
from ..errors import InputError
from ..store.readouts import refuse_readout_run
from .ranking import ranked, readout_ranking, spurious_scores
from .removal import Removal, Split, remove_spurious
from .pipeline import varying

SPLITS = {"train": 0, "validation": 1, "test": 2}


def logit_contributions(run, head: torch.nn.Linear, indices: np.ndarray) -> torch.Tensor:
    """[n, C + 1, classes]: every component through the classifier's weights, and its bias last."""
    refuse_readout_run(run, "the classifier's logit contributions (the head reads the output's width)")
    w = head.weight.detach().float()
    parts = []
    for start, stop, block in run.shards():
        sel = indices[(indices >= start) & (indices < stop)] - start
        if len(sel):
            parts.append(torch.einsum("ncd,kd->nck", block[torch.as_tensor(sel)], w))
    out = torch.cat(parts)
    bias = head.bias.detach().float() if head.bias is not None else torch.zeros(w.shape[0])
    return torch.cat([out, bias.expand(len(out), 1, -1)], 1)


def from_run(run, *, clip, spurious_words: Sequence[str], label_words: Sequence[str] = (), max_k: int = 20,
             random_draws: int = 20, seed: int = 0) -> tuple[Removal, list[str], list[str]]:
    """(removal, ranking, oracle) for a run of a Waterbirds-layout folder decomposed whole, aligned first;
    components are ranked through the run's shared map."""
    refuse_readout_run(run, "the spurious-feature experiment")
    labels = run.labels
    missing = [k for k in ("target", "place", "group", "split") if k not in labels]
    if missing:
        raise InputError(f"{run.path} has no {', '.join(missing)} labels: decompose a Waterbirds-layout folder "
                         "(metadata.csv with img_filename, y, place, split), all splits at once")
    head = run.head()
    if head is None:
        raise InputError(f"{run.path} was decomposed from a model without a linear classifier; decompose the "
                         "classifier itself (e.g. --checkpoint FILE --num-classes 2)")
    split_of = labels["split"]
    idx = {name: np.nonzero(split_of == code)[0] for name, code in SPLITS.items()}
    empty = [name for name, i in idx.items() if not len(i)]
    if empty:
        raise InputError(f"{run.path} has no images in split(s) {empty}; metadata.csv must list train (0), "
                         "validation (1) and test (2) images")
    shared = run_shared_aligner(run)  # rankings read the shared map (docs/ALIGN.md); refuses a run without one
    train_c = run.images(idx["train"])
    feats = _features(train_c, run.components)
    candidates = varying(feats)
    scores = spurious_scores(shared.map(train_c), spurious_words, label_words, clip=clip)
    ranking = ranked(scores, candidates)
    oracle = readout_ranking(train_c, labels["place"][idx["train"]], run.images(idx["validation"]),
                             labels["place"][idx["validation"]], run.names, candidates)
    names = run.names + ["classifier bias"]
    splits = [Split(logit_contributions(run, head, idx[s]), labels["target"][idx[s]], labels["group"][idx[s]])
              for s in SPLITS]
    removal = remove_spurious(names, ranking, *splits, max_k=max_k, random_draws=random_draws, oracle=oracle,
                              seed=seed)
    return removal, ranking, oracle


def _features(contributions, components):
    from ..align.features import Features

    return Features(contributions, None, components)
