"""Decompose-to-store throughput against the plain forward on the same images, measured in one run.

    python benchmarks/store_speed.py                                  # DeiT-B, head granularity, CPU, 48 images
    python benchmarks/store_speed.py --device cuda --images 8192 --batch 256 --json out/store_speed.json
    python benchmarks/store_speed.py --device cuda --images 50000 --batch 256   # the ImageNet-validation-sized run

Images are random uint8 [3, 224, 224] arrays on the host (drawn from --seed), as decoded images
would arrive; weights are random (speed does not depend on them). Both paths read the same
images through the same DataLoader, the model's resize and crop in its workers (DeiT: short side
to 248, bicubic, centre crop 224) and its normalisation on the device:

* plain: the model's own forward, output copied to the host;
* store: ``decompose_to_store`` end to end (pinned buffers, non-blocking copies, background shard
  writer), into a fresh run folder.

Reported: images/s of each, their ratio (target: store >= 0.9 x plain on a GPU), the time a
50,000-image run takes at the measured rate (target: < 60 s on one H100/H200), the store's size,
and peak host memory (RSS) and, on a GPU, peak device memory.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fxdecomp.peak_memory import peak_rss_mb

TARGETS = {"ratio": 0.9, "imagenet_val_seconds": 60.0}
IMAGENET_VAL = 50_000


class RandomImages(torch.utils.data.Dataset):
    """``n`` random uint8 images, each a pure function of (seed, index)."""

    def __init__(self, n: int, size: int = 224, seed: int = 0):
        self.n, self.size, self.seed = n, size, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, i])
        return {"image": torch.from_numpy(rng.integers(0, 256, (3, self.size, self.size), dtype=np.uint8))}

    def ids(self) -> list[str]:
        return [f"random:{self.seed}:{i}" for i in range(self.n)]


@torch.no_grad()
def plain(model, data, batch, device, workers) -> float:
    from fxdecomp.models_registry import transform_for
    from fxdecomp.store.loader import loader
    from fxdecomp.store.shards import ShardPlan

    pre = transform_for(model)
    feed = loader(data, ShardPlan(len(data), len(data)), [0], batch, workers=workers, pin=device.type == "cuda",
                  transform=pre.resize_crop)  # the model's resize and crop in the workers, as the store does
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    out = []
    for raw, _ in feed:  # (images, their content digests)
        y = model(pre.normalize(raw.to(device, non_blocking=True)))
        out.append(y.to("cpu", non_blocking=True))
    sync()
    return len(data) / (time.perf_counter() - start)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="timm:deit_base_patch16_224")
    ap.add_argument("--granularity", default="head", choices=("block", "head", "token"))
    ap.add_argument("--images", type=int, default=None, help="default: 48 on a CPU, 8192 on a GPU")
    ap.add_argument("--batch", type=int, default=None, help="default: 16 on a CPU, 256 on a GPU")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    ap.add_argument("--shard-mb", type=float, default=1024)
    ap.add_argument("--seed", type=int, default=0, help="draws the images")
    ap.add_argument("--out", default=None, help="run folder (default: a temporary one, deleted after)")
    ap.add_argument("--json", type=Path, default=None, help="write every printed figure here")
    args = ap.parse_args(argv)
    from fxdecomp.models_registry import load
    from fxdecomp.store import decompose_to_store, open_run

    device = torch.device(args.device)
    gpu = device.type == "cuda"
    n = args.images or (8192 if gpu else 48)
    batch = args.batch or (256 if gpu else 16)
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32
    torch.manual_seed(args.seed)
    model = load(args.model).eval()
    data = RandomImages(n, 224, args.seed)
    warm = RandomImages(min(n, 2 * batch), 224, args.seed + 1)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    fwd = model.to(device=device, dtype=dtype)

    class Cast(torch.nn.Module):  # the plain path in the run's dtype
        def __init__(self, m):
            super().__init__()
            self.m = m
            self.pretrained_cfg = getattr(m, "pretrained_cfg", None)

        def forward(self, x):
            return self.m(x.to(dtype))

    plain(Cast(fwd), warm, batch, device, args.workers)
    rate_plain = plain(Cast(fwd), data, batch, device, args.workers)
    folder = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="fxdecomp-store-"))
    try:
        scratch = folder.with_name(folder.name + "-warm")
        shutil.rmtree(scratch, ignore_errors=True)
        decompose_to_store(load(args.model), warm, scratch, model_name=args.model, granularity=args.granularity,
                           batch=batch, device=device, dtype=args.dtype, shard_mb=args.shard_mb,
                           workers=args.workers, progress=False)
        shutil.rmtree(scratch, ignore_errors=True)
        if gpu:
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        done = decompose_to_store(load(args.model), data, folder, model_name=args.model,
                                  granularity=args.granularity, batch=batch, device=device, dtype=args.dtype,
                                  shard_mb=args.shard_mb, workers=args.workers, progress=True)
        wall = time.perf_counter() - start
        run = open_run(folder)
        size_gb = sum(s["bytes"] for s in run.manifest["shards"]) / 1e9
        res = {
            "model": args.model, "granularity": args.granularity, "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if gpu else None, "dtype": args.dtype, "images": n,
            "batch": batch, "workers": args.workers, "seed": args.seed, "components": len(run.components),
            "plain_images_per_s": rate_plain, "store_images_per_s": done.images_per_s,
            "ratio": done.images_per_s / rate_plain, "setup_seconds": wall - done.seconds,
            "imagenet_val_seconds": (wall - done.seconds) + IMAGENET_VAL / done.images_per_s, "store_gb": size_gb,
            "store_gb_for_imagenet_val": size_gb * IMAGENET_VAL / n,
            "reconstruction_error": run.error(),
            "error_vs_float32": run.manifest["reconstruction"]["max_relative_error_vs_float32"],
            "peak_host_rss_mb": peak_rss_mb(),
            "peak_device_mb": torch.cuda.max_memory_allocated(device) / 2**20 if gpu else None,
        }
    finally:
        if args.out is None:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"{args.model}, {args.granularity} granularity, {res['components']} components, {n} images of 224x224, "
          f"batch {batch}, {args.dtype}, {res['gpu'] or 'CPU'} ({torch.get_num_threads()} threads), "
          f"{args.workers} loader workers")
    print(f"plain forward:          {rate_plain:9.1f} images/s")
    print(f"decompose to the store: {res['store_images_per_s']:9.1f} images/s, loading to the last shard on disk "
          f"(ratio {res['ratio']:.3f}; target >= {TARGETS['ratio']} on a GPU)")
    print(f"a 50,000-image run: {res['setup_seconds']:.1f} s to compile and start, then the images at this rate: "
          f"{res['imagenet_val_seconds']:.0f} s in all (target < 60 s on one H100/H200); store "
          f"{res['store_gb_for_imagenet_val']:.1f} GB")
    print(f"reconstruction: max relative error {res['reconstruction_error']:.2e}"
          + (f", against float32 {res['error_vs_float32']:.2e}" if res["error_vs_float32"] is not None else ""))
    print(f"peak host memory {res['peak_host_rss_mb']:.0f} MB"
          + (f"; peak device memory {res['peak_device_mb']:.0f} MB" if gpu else ""))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
