"""CompAlign over a run: CLIP embeddings of the run's own images (added once), then training
from the store shard by shard, so memory holds one shard whatever the run's size.

Both hold the run's lock while they write, and record the size and SHA-256 of what they write.
A run's aligner is replaced only on purpose (``overwrite=True``, ``fxdecomp align --overwrite``),
and only by one whose training finished with a finite loss.
"""
from __future__ import annotations

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..align.clip_space import ClipSpace
from ..align.compalign import CompAlign, check_training
from ..errors import InputError
from .files import ALIGNER_RECORD, publish, read_json, sha256, tmp_path, write_json
from .loader import loader
from .lock import RunLock
from .run import CLIP_EMBEDDINGS, CLIP_RECORD, Run
from .shards import ShardPlan


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


def align_run(run: Run, clip: ClipSpace, *, lam: float = 1.0, epochs: int = 10, batch_size: int = 32,
              lr: float = 3e-4, device="cpu", seed: int = 0, workers: int = 0, progress: bool = True,
              checkpoint=None, overwrite: bool = False) -> CompAlign:
    """Train CompAlign on the run (CLIP embeddings added first if missing) and save it in the run.

    A run that has an aligner keeps it unless ``overwrite``; training whose loss goes non-finite
    raises ``InputError`` and writes nothing."""
    check_training(lam=lam, epochs=epochs, batch_size=batch_size, lr=lr)
    refuse_replacing(run, overwrite)
    emb = embed_images(run, clip, device=device, workers=workers, progress=progress)
    aligner = CompAlign(run.components, run.d_model, emb.shape[1], lam=lam, seed=seed, clip_name=clip.name,
                        model_name=run.model_name)
    history = aligner.fit(run.stream(clip.name, batch_size, shuffle_seed=seed), epochs=epochs, lr=lr, device=device,
                          progress=progress)
    aligner.cpu()
    path = run.aligner_path()
    with RunLock(run.path, what="align"):
        refuse_replacing(run, overwrite)  # another process may have aligned it meanwhile
        tmp = tmp_path(path)
        aligner.save(tmp)
        publish(tmp, path)
        write_json(run.path / ALIGNER_RECORD, {"clip": clip.spec, "checkpoint": str(checkpoint) if checkpoint else None,
                                               "lam": lam, "epochs": epochs, "batch_size": batch_size,
                                               "lr": lr, "seed": seed, "final_cosine": 1 - history["cos"][-1],
                                               "bytes": path.stat().st_size, "sha256": sha256(path)})
    return aligner


def refuse_replacing(run: Run, overwrite: bool) -> None:
    """An aligner is there and ``overwrite`` was not asked for: say which, and how to replace it."""
    if overwrite or not run.aligner_path().is_file():
        return
    what = ""
    record = run.path / ALIGNER_RECORD
    if record.is_file():
        try:
            rec = read_json(record)
            what = f" (into {rec.get('clip')}, lam={rec.get('lam')}, {rec.get('epochs')} epochs)"
        except InputError:
            pass
    raise InputError(f"{run.path} already has an aligner{what}; pass --overwrite (overwrite=True) to replace it, "
                     "or copy the run first to keep both")
