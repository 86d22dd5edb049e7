"""Every method's maps over a data set, and their scores against ground-truth masks."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from ..errors import InputError
from .baselines import BASELINES, baselines
from .maps import position_maps
from .metrics import segmentation_scores

METHODS = ("decompose",) + BASELINES


def method_maps(model, dm, images: torch.Tensor, *, directions: torch.Tensor | None = None,
                methods: Sequence[str] = METHODS, reduce: str = "norm", layers=None, batch_size: int = 50,
                size=None, variants: dict | None = None, progress: bool = True,
                desc: str = "segment") -> dict[str, torch.Tensor]:
    """{method: [N, rows, cols] maps} for model inputs ``images`` [N, C, H, W].

    ``dm``: the model decomposed at token granularity (its component table also places the
    baselines' attention maps). ``directions`` [N, D] in the model's output space: what the
    gradient baselines explain, and what ``reduce="signed"``/``"abs"`` reads along. ``size``: the
    (H, W) the decomposition's maps are made at (default: the finest token grid). ``variants``
    {name: {"layers": ..., "reduce": ...}}: more decomposition maps, each under its own name, read
    from the same decomposition of each batch (the model is decomposed once).
    """
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise InputError(f"unknown segmentation method(s) {bad}; use {METHODS}")
    if directions is not None and len(directions) != len(images):
        raise InputError(f"{len(directions)} directions for {len(images)} images")
    variants = dict(variants or {})
    clash = set(variants) & set(methods)
    if clash:
        raise InputError(f"variant names {sorted(clash)} are also methods; name them apart")
    reads = {**({"decompose": {}} if "decompose" in methods else {}), **variants}
    out: dict[str, list[torch.Tensor]] = {m: [] for m in [*methods, *variants]}
    bar = tqdm(range(0, len(images), batch_size), disable=None if progress else True, desc=desc, unit="batch", leave=False)
    for start in bar:
        x = images[start:start + batch_size]
        d = directions[start:start + batch_size] if directions is not None else None
        if reads:
            with torch.no_grad():
                dec = dm(x.to(dm.dtype))
            for name, kw in reads.items():
                kw = {"layers": layers, "reduce": reduce, **kw}
                out[name].append(position_maps(dec, size=size, direction=d, **kw).cpu())
        others = [m for m in methods if m != "decompose"]
        if others:  # one recorded forward (and backward) serves every baseline
            for m, v in baselines(others, model, x, dm.components, d).items():
                out[m].append(v.detach().cpu())
    return {m: torch.cat(v) for m, v in out.items()}


def evaluate_segmentation(maps: dict[str, torch.Tensor], masks) -> dict[str, dict[str, float]]:
    """{method: {"pixel_acc", "miou", "map"}} for each method's maps."""
    return {m: segmentation_scores(v, masks) for m, v in maps.items()}
