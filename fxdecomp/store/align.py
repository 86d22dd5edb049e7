"""CompAlign over a run: CLIP embeddings of the run's own images (added once), then training
from the store shard by shard, so memory holds one shard whatever the run's size."""
from __future__ import annotations

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..align.clip_space import ClipSpace
from ..align.compalign import CompAlign
from .files import ALIGNER_RECORD, publish, tmp_path, write_json
from .loader import loader
from .run import Run
from .shards import ShardPlan


@torch.no_grad()
def embed_images(run: Run, clip: ClipSpace, *, batch: int = 256, device="cpu", workers: int = 0,
                 progress: bool = True) -> torch.Tensor:
    """[N, d_clip] CLIP embeddings of the run's images, stored in the run (computed only once per CLIP)."""
    if run.has_clip(clip.name):
        return run.clip_embeddings(clip.name)
    data = run.data()
    clip.to(device)
    plan = ShardPlan(len(data), len(data))
    pre = clip.preprocess  # resize and crop in the loader where it can be split so; the rest on the device
    split = callable(getattr(pre, "resize_crop", None)) and callable(getattr(pre, "normalize", None))
    feed = loader(data, plan, [0], batch, workers=workers, pin=torch.device(device).type == "cuda",
                  transform=pre.resize_crop if split else None)
    out = []
    for raw in tqdm(feed, disable=not progress, desc=f"embed with {clip.name}", unit="batch"):
        x = pre.normalize(raw.to(device, non_blocking=True)) if split else pre(raw.to(device, non_blocking=True))
        out.append(clip.embed_preprocessed(x).float().cpu())
    emb = torch.cat(out)
    folder = run.clip_folder(clip.name)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "embeddings.safetensors"
    tmp = tmp_path(path)
    save_file({"clip": emb.contiguous()}, str(tmp), metadata={"clip": clip.name})
    publish(tmp, path)
    write_json(folder / "complete.json", {"clip": clip.name, "n": len(emb), "dim": emb.shape[1]})
    return emb


def align_run(run: Run, clip: ClipSpace, *, lam: float = 1.0, epochs: int = 10, batch_size: int = 32,
              lr: float = 3e-4, device="cpu", seed: int = 0, workers: int = 0, progress: bool = True,
              checkpoint=None) -> CompAlign:
    """Train CompAlign on the run (CLIP embeddings added first if missing) and save it in the run."""
    emb = embed_images(run, clip, device=device, workers=workers, progress=progress)
    aligner = CompAlign(run.components, run.d_model, emb.shape[1], lam=lam, seed=seed, clip_name=clip.name,
                        model_name=run.model_name)
    history = aligner.fit(run.stream(clip.name, batch_size, shuffle_seed=seed), epochs=epochs, lr=lr, device=device,
                          progress=progress)
    aligner.cpu()
    path = run.aligner_path()
    tmp = tmp_path(path)
    aligner.save(tmp)
    publish(tmp, path)
    write_json(run.path / ALIGNER_RECORD, {"clip": clip.spec, "checkpoint": str(checkpoint) if checkpoint else None,
                                           "lam": lam, "epochs": epochs, "batch_size": batch_size,
                                           "lr": lr, "seed": seed, "final_cosine": 1 - history["cos"][-1]})
    return aligner
