"""The whole experiment on a user's classifier and data: align, rank, ablate, report.

Data are three splits with Waterbirds fields (``targets``, ``groups`` = 2 · label + place
and, for the oracle, ``places``): ``fxdecomp.data.WaterbirdsFolder`` splits of a folder with
``metadata.csv``, or ``fxdecomp.data.WorldSpurious`` splits of the synthetic world.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..align.compalign import CompAlign
from ..align.features import collect
from ..align.representation import representation
from ..compiler import decompose
from ..errors import InputError
from ..models_registry.preprocess import transform_for
from .ranking import ranked, readout_ranking, spurious_scores
from .removal import Removal, Split, remove_spurious

#: A component whose variance is below this fraction of the representation's is a constant.
CONSTANT = 1e-10


@dataclass
class SpuriousRun:
    removal: Removal
    ranking: list[str]
    scores: dict[str, float]
    oracle: list[str] | None
    aligner: CompAlign


def _labels(data, name: str) -> tuple[np.ndarray, np.ndarray]:
    targets, groups = getattr(data, "targets", None), getattr(data, "groups", None)
    if targets is None or groups is None:
        raise InputError(f"the {name} split has no labels and groups: use a Waterbirds-layout folder "
                         "(metadata.csv with img_filename, y, place, split) or fxdecomp.data.WorldSpurious")
    return np.asarray(targets), np.asarray(groups)


def _all_groups(groups: np.ndarray, name: str) -> None:
    present = set(np.unique(groups).tolist())
    missing = sorted(set(range(4)) - present)
    if missing:
        raise InputError(f"the {name} split has no images of group(s) {missing} (group = 2 * label + place): "
                         "worst-group accuracy needs both places for both labels")


def varying(feats) -> list[str]:
    """Components whose contributions vary over the images: a constant cannot be ranked or ablated usefully."""
    var = feats.contributions.double().var(0).sum(-1)
    return [n for n, v in zip(feats.names, var) if v > CONSTANT * float(var.sum())]


def find_and_remove(model: torch.nn.Module, train, validation, test, *, clip, spurious_words: Sequence[str],
                    label_words: Sequence[str] = (), aligner: CompAlign | None = None, granularity: str = "head",
                    epochs: int = 10, max_k: int = 20, random_draws: int = 20, batch_size: int = 64, device=None,
                    progress: bool = True, seed: int = 0) -> SpuriousRun:
    """Rank ``model``'s components by ``spurious_words`` against ``label_words`` and mean-ablate the top k.

    The ranking reads a shared map (one map for every component, λ = 0: the aligner whose rankings
    hold against the ground truth, docs/ALIGN.md), trained on the training split's images unless
    ``aligner``, a shared-map CompAlign of this model's representation at this granularity, is
    given; means come from the training split, k from the validation split, numbers from the test split.
    """
    if not spurious_words:
        raise InputError("describe the spurious attribute with at least one description (e.g. background places)")
    if aligner is not None and aligner.variant != "shared":
        raise InputError(f"find_and_remove ranks components through a shared map, and the aligner given has "
                         f"{aligner.variant} maps, whose rankings are not sound (docs/ALIGN.md): pass a "
                         "CompAlign(..., variant='shared', lam=0) or none (one is trained)")
    labels = {name: _labels(d, name) for name, d in (("train", train), ("validation", validation), ("test", test))}
    for name in ("validation", "test"):
        _all_groups(labels[name][1], name)
    rep = representation(model)
    dm_rep, dm_clf = decompose(rep, granularity), decompose(model, granularity)
    pre = transform_for(model)
    kw = dict(preprocess=pre, device=device, batch_size=batch_size, progress=progress)
    ftr = collect(dm_rep, train, clip=clip if aligner is None else None, desc="representation: train split", **kw)
    if aligner is None:
        aligner = CompAlign.for_features(ftr, variant="shared", lam=0.0, seed=seed)
        aligner.fit(ftr, epochs=epochs, device=device, seed=seed, progress=progress)
        aligner.cpu()
    aligner.check(components=ftr.components, d_model=ftr.contributions.shape[2])
    candidates = varying(ftr)
    scores = spurious_scores(aligner.map(ftr), spurious_words, label_words, clip=clip)
    ranking = ranked(scores, candidates)
    oracle = None
    if getattr(train, "places", None) is not None and getattr(validation, "places", None) is not None:
        fval = collect(dm_rep, validation, desc="representation: validation split", **kw)
        oracle = readout_ranking(ftr.contributions, train.places, fval.contributions, validation.places,
                                 ftr.names, candidates)
    splits = {}
    for name, data in (("train", train), ("validation", validation), ("test", test)):
        f = collect(dm_clf, data, desc=f"classifier: {name} split", **kw)
        splits[name] = Split(f.contributions, *labels[name])
    removal = remove_spurious(dm_clf.components.names, ranking, splits["train"], splits["validation"],
                              splits["test"], max_k=max_k, random_draws=random_draws, oracle=oracle, seed=seed)
    return SpuriousRun(removal, ranking, scores, oracle, aligner)
