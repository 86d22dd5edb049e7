"""Decomposed contributions and CLIP embeddings of the same images, in the same order.

Alignment pairs component contributions of image x with CLIP's embedding of the
same x. ``collect`` is ``materialise`` of ``ImageBatches`` (fxdecomp.align.batches), with a
cache on disk: it reads each raw batch once and hands that one batch to both models, each
through its own eval preprocessing, so the pairing cannot slip: there is no second loader
to shuffle differently, and a shuffling DataLoader is refused. ``materialise`` keeps any
``Batches`` in memory, a run's (``RunBatches``) as well.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..atomic import publish, tmp_path
from ..checks import whole_number
from ..components import ComponentTable
from ..decomposition import Decomposition
from ..errors import InputError
from ..hashing import json_digest, module_digest, safe_name, tensors_digest
from ..module import DecomposedModel
from .batches import Batches, ImageBatches, Stream  # noqa: F401  (Stream: the deprecated name, importable here too)
from .clip_space import ClipSpace

CACHE_FORMAT = "fxdecomp.align.features/2"  # /2: the model's outputs are kept too


class Features(Decomposition):
    """A data set's ``Decomposition`` under the names it had before there was one type: ``contributions``
    [N, C, D] float32 and ``clip`` [N, d_clip] (normalised CLIP image embeddings, or None) of N images in
    dataset order, ``components`` labelling C, the model's ``output`` where it was kept; ``len()`` counts
    images. ``collect`` and ``run_features`` return it."""

    def __init__(self, contributions: torch.Tensor, clip: torch.Tensor | None, components: ComponentTable,
                 meta: dict | None = None, output: torch.Tensor | None = None):
        if contributions.dim() != 3 or contributions.shape[1] != len(components):
            raise InputError(f"contributions {list(contributions.shape)} do not fit "
                             f"{len(components)} components")
        if clip is not None and clip.shape[0] != contributions.shape[0]:
            raise InputError(f"{contributions.shape[0]} contributions but {clip.shape[0]} CLIP embeddings")
        super().__init__(contributions, components, output, clip=clip, meta=meta)

    def __len__(self) -> int:
        return self.contributions.shape[0]

    def __repr__(self) -> str:
        n, c, d = self.contributions.shape
        clip = "none" if self.clip is None else self.clip.shape[1]
        return f"Features({n} images, {c} components, d_model={d}, d_clip={clip})"


def materialise(batches: Batches, *, progress: bool = False, desc: str | None = None) -> Features:
    """Every image of ``batches`` (either backend) in memory, in dataset order, as ``Features`` with the
    model's outputs: contributions, CLIP embeddings and outputs as float32 on the CPU."""
    contribs, embs, outputs = [], [], []
    bar = tqdm(batches.blocks(), total=len(batches), disable=None if progress else True,
               desc=desc or f"decompose {batches.meta.get('model')}", unit="batch", leave=False)
    with torch.no_grad():
        for c, e, y in bar:
            contribs.append(c.float().cpu())
            outputs.append(y.float().cpu())
            if e is not None:
                embs.append(e.float().cpu())
    return Features(torch.cat(contribs), torch.cat(embs) if embs else None, batches.components, batches.meta,
                    output=torch.cat(outputs))


@torch.no_grad()
def collect(dm: DecomposedModel, data, *, preprocess: Callable, clip: ClipSpace | None = None,
            batch_size: int = 64, device=None, cache: str | Path | None = None, key: str | None = None,
            progress: bool = True, desc: str | None = None) -> Features:
    """Decompose every image of ``data`` (and embed it with ``clip``), in dataset order.

    Args:
        dm: the decomposed model (``fxdecomp.decompose(representation(model))``).
        data: uint8 array [N, H, W, 3], tensor [N, 3, H, W], an indexable dataset (items are images,
            ``(image, ...)`` tuples or dicts with ``"image"``) or a DataLoader with ``shuffle=False``.
        preprocess: the model's eval preprocessing, raw batch -> model input
            (``fxdecomp.models_registry.transform_for(model)``).
        clip: the CLIP space whose image embeddings are the alignment targets (optional).
        device: where to run. ``dm`` and ``clip`` are moved there and stay there; ``dm`` shares its
            parameters with the decomposed model, so the user's own model moves with it.
        cache: a folder; results are stored under a key made of everything they depend on
            (model and CLIP weights, granularity, components, the images or ``key``, both
            preprocessings) and reused only when all of it matches.
        key: names a dataset that is not an array (e.g. ``"World(10000, seed=2)"``) in the cache key.

    Returns contributions as float32 on the CPU.
    """
    whole_number("batch_size", batch_size)
    dev = torch.device(device) if device is not None else dm.device
    batches = ImageBatches(dm, data, preprocess=preprocess, clip=clip, batch_size=batch_size, device=dev)
    if len(batches.source) == 0:
        raise InputError("no images to collect")
    dm.to(dev)
    if clip is not None:
        clip.to(dev)
    path = full_key = None
    if cache is not None:
        full_key = _cache_key(dm, clip, batches, preprocess, key)
        digest = json_digest(full_key)[:20]
        path = Path(cache) / f"{safe_name(dm.model_name)}-{dm.granularity}-{len(batches.source)}-{digest}.safetensors"
        hit = _read_cache(path, full_key, dm.components)
        if hit is not None:
            return hit
    out = materialise(batches, progress=progress, desc=desc or f"decompose {dm.model_name}")
    if path is not None:
        _write_cache(path, full_key, out)
    return out


# -- caching ----------------------------------------------------------------------------------------
def _cache_key(dm: DecomposedModel, clip: ClipSpace | None, batches: ImageBatches, preprocess, key) -> dict:
    source = batches.source
    data = source.data
    if isinstance(data, (np.ndarray, torch.Tensor)):
        data_id = "array:" + tensors_digest([("images", torch.as_tensor(np.asarray(data)))])
    else:
        if key is None:
            key = _auto_key(source.data.dataset if source.loader else source.data)
        if key is None:
            raise InputError("caching a dataset that is not an array needs key='...' naming it (which images, "
                             "which seed), so that another dataset is never served from this cache")
        data_id = "dataset:" + key
    first = source.first()
    parts = {
        "format": CACHE_FORMAT,
        "model": dm.model_name, "granularity": dm.granularity, "layers": sorted(dm.layers) if dm.layers else None,
        "components": hashlib.sha256("\n".join(dm.components.names).encode()).hexdigest(),
        "weights": module_digest(dm.graph_module), "dtype": str(dm.dtype), "input": list(dm.input_shape),
        "n": len(source), "data": data_id, "first_batch": tensors_digest([("raw", first)] if isinstance(first, torch.Tensor) else
                                      [(f"raw{i}", im) for i, im in enumerate(first)]),
        "preprocess": tensors_digest([("x", preprocess(first).float())]),
        "clip": None,
    }
    if clip is not None:
        parts["clip"] = {"name": clip.name, "weights": module_digest(clip.visual),
                         "preprocess": tensors_digest([("x", clip.preprocess(first).float())])}
    if key is not None:
        parts["key"] = key
    return parts


def _auto_key(dataset) -> str | None:
    from ..world.dataset import World

    if isinstance(dataset, World):
        return f"World(n={dataset.n}, seed={dataset.seed}, size={dataset.size}, spurious={dataset.spurious})"
    return None


def _read_cache(path: Path, full_key: dict, components: ComponentTable) -> Features | None:
    if not path.is_file():
        return None
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        if json.loads(meta.get("key", "null")) != full_key:
            return None
        contributions, output = f.get_tensor("contributions"), f.get_tensor("output")
        clip = f.get_tensor("clip") if "clip" in set(f.keys()) else None
    return Features(contributions, clip, components, json.loads(meta.get("meta", "{}")), output=output)


def _write_cache(path: Path, full_key: dict, feats: Features) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"contributions": feats.contributions.contiguous(), "output": feats.output.contiguous()}
    if feats.clip is not None:
        tensors["clip"] = feats.clip.contiguous()
    tmp = tmp_path(path)  # the store's one way to write: a name of this process's own, then a rename
    save_file(tensors, str(tmp), metadata={"key": json.dumps(full_key, sort_keys=True),
                                           "meta": json.dumps(feats.meta)})
    publish(tmp, path)
