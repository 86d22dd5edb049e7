"""CompAlign over a run: CLIP embeddings of the run's own images (added once), then training
from the store shard by shard, so memory holds one shard whatever the run's size.

Training gives two aligners: the per-component maps (λ as asked, what descriptions read) and the
shared map (one map for every component, λ = 0, what rankings read: docs/ALIGN.md finds a ranking
sound only there). Both hold the run's lock while they write, and record the size and SHA-256 of what
they write. A run's aligners are replaced only on purpose (``overwrite=True``, ``fxdecomp align
--overwrite``), and only by ones whose training finished with a finite loss; ``shared_only`` adds the
shared map to a run aligned before ``align`` trained one, keeping its per-component maps.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..errors import InputError
from ..store.files import ALIGNER_RECORD, SHARED_RECORD, publish, read_json, sha256, tmp_path, write_json
from ..store.loader import loader
from ..store.lock import RunLock
from ..store.run import CLIP_EMBEDDINGS, CLIP_RECORD, Run
from ..store.shards import ShardPlan
from .clip_space import ClipSpace
from .compalign import CompAlign, check_training
from .runs import run_batches


@torch.no_grad()
def embed_images(run: Run, clip: ClipSpace, *, batch: int = 256, device="cpu", workers: int = 0,
                 progress: bool = True) -> torch.Tensor:
    """[N, d_clip] CLIP embeddings of the run's images, stored in the run (computed only once per CLIP)."""
    if run.has_clip(clip.name):
        try:
            return run.clip_embeddings(clip.name)
        except InputError:  # damaged: computed again below
            pass
    data = run.data()
    clip.to(device)
    plan = ShardPlan(len(data), len(data))
    pre = clip.preprocess  # resize and crop in the loader where it can be split so; the rest on the device
    split = callable(getattr(pre, "resize_crop", None)) and callable(getattr(pre, "normalize", None))
    feed = loader(data, plan, [0], batch, workers=workers, pin=torch.device(device).type == "cuda",
                  transform=pre.resize_crop if split else None)
    out = []
    for raw, _ in tqdm(feed, disable=None if progress else True, desc=f"embed with {clip.name}", unit="batch"):
        x = pre.normalize(raw.to(device, non_blocking=True)) if split else pre(raw.to(device, non_blocking=True))
        out.append(clip.embed_preprocessed(x).float().cpu())
    emb = torch.cat(out)
    if not torch.isfinite(emb).all():
        raise InputError(f"{clip.name} gave non-finite embeddings for some of the run's images; check the CLIP's "
                         "weights (--clip-checkpoint)")
    folder = run.clip_folder(clip.name)
    with RunLock(run.path, what="align"):
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / CLIP_EMBEDDINGS
        tmp = tmp_path(path)
        save_file({"clip": emb.contiguous()}, str(tmp), metadata={"clip": clip.name})
        publish(tmp, path)
        write_json(folder / CLIP_RECORD, {"clip": clip.name, "n": len(emb), "dim": emb.shape[1],
                                         "bytes": path.stat().st_size, "sha256": sha256(path)})
    return emb


#: The shared map's penalty weight: unconstrained, as measured in docs/ALIGN.md.
SHARED_LAM = 0.0


class Aligners(NamedTuple):
    """What ``align_run`` trained: the per-component maps (None with ``shared_only``) and the shared map."""

    per_component: CompAlign | None
    shared: CompAlign


def align_run(run: Run, clip: ClipSpace, *, lam: float = 1.0, epochs: int = 10, batch_size: int = 32,
              lr: float = 3e-4, device="cpu", seed: int = 0, workers: int = 0, progress: bool = True,
              checkpoint=None, overwrite: bool = False, shared_only: bool = False) -> Aligners:
    """Train the per-component maps and the shared map on the run (CLIP embeddings added first if
    missing) and save both in the run; ``shared_only``: the shared map alone, into the CLIP the run's
    aligner maps into.

    A run keeps what it has unless ``overwrite``; training whose loss goes non-finite raises
    ``InputError`` and writes nothing (neither map)."""
    check_training(lam=lam, epochs=epochs, batch_size=batch_size, lr=lr)
    run.require_full("CompAlign (fxdecomp align)")
    refuse_replacing(run, overwrite, shared_only)
    if shared_only:
        check_same_clip(run, clip.spec)
    emb = embed_images(run, clip, device=device, workers=workers, progress=progress)
    settings = {"clip": clip.spec, "checkpoint": str(checkpoint) if checkpoint else None, "epochs": epochs,
                "batch_size": batch_size, "lr": lr, "seed": seed}
    trained = []  # (aligner, path, record file, its record)
    variants = [("shared", SHARED_LAM)] if shared_only else [("per_component", lam), ("shared", SHARED_LAM)]
    for variant, weight in variants:
        aligner = CompAlign(run.components, run.d_model, emb.shape[1], variant=variant, lam=weight, seed=seed,
                            clip_name=clip.name, model_name=run.model_name)
        history = aligner.fit(run_batches(run, clip.name, batch_size, shuffle_seed=seed), epochs=epochs, lr=lr,
                              device=device, progress=progress)
        aligner.cpu()
        path, record = ((run.shared_aligner_path(), SHARED_RECORD) if variant == "shared"
                        else (run.aligner_path(), ALIGNER_RECORD))
        trained.append((aligner, path, record, {**settings, "variant": variant, "lam": weight,
                                                "final_cosine": 1 - history["cos"][-1]}))
    with RunLock(run.path, what="align"):
        refuse_replacing(run, overwrite, shared_only)  # another process may have aligned it meanwhile
        for aligner, path, record, rec in trained:
            tmp = tmp_path(path)
            aligner.save(tmp)
            publish(tmp, path)
            write_json(run.path / record, {**rec, "bytes": path.stat().st_size, "sha256": sha256(path)})
    return Aligners(None if shared_only else trained[0][0], trained[-1][0])


def check_same_clip(run: Run, spec: str) -> None:
    """The shared map alone goes into the CLIP (``spec``) of the run's per-component maps (there must be some)."""
    if not run.aligner_path().is_file():
        raise InputError(f"{run.path} has no aligner yet: run fxdecomp align {run.path} --clip {spec} without "
                         "--shared-only to train both maps")
    record = run.path / ALIGNER_RECORD
    have = read_json(record).get("clip") if record.is_file() else None
    if have is not None and have != spec:
        raise InputError(f"the run's per-component maps go into {have}, not {spec}: pass --clip {have} with "
                         "--shared-only, or --overwrite without it to train both into the new CLIP")


def refuse_replacing(run: Run, overwrite: bool, shared_only: bool = False) -> None:
    """An aligner that this training would write is there and ``overwrite`` was not asked for: say
    which, and how to replace it."""
    if overwrite:
        return
    files = [(run.shared_aligner_path(), SHARED_RECORD, "a shared map")]
    if not shared_only:
        files.insert(0, (run.aligner_path(), ALIGNER_RECORD, "an aligner"))
    for path, record, name in files:
        if not path.is_file():
            continue
        what = ""
        if (run.path / record).is_file():
            try:
                rec = read_json(run.path / record)
                what = f" (into {rec.get('clip')}, lam={rec.get('lam')}, {rec.get('epochs')} epochs)"
            except InputError:
                pass
        lacks = ("; --shared-only adds the shared map it lacks" if path == run.aligner_path()
                 and not run.shared_aligner_path().is_file() else "")
        raise InputError(f"{run.path} already has {name}{what}; pass --overwrite (overwrite=True) to replace it, "
                         f"or copy the run first to keep both{lacks}")
