"""A token run read through a readout, as the command line writes it: disk, memory and time.

    python benchmarks/readout_run.py                        # 1,000 images, DeiT-B, K = 16, CPU
    python benchmarks/readout_run.py --images 100 --json run.json --seed 0

Runs ``fxdecomp decompose timm:deit_base_patch16_224 world:N:SEED --random-weights --granularity
token --readout R.safetensors`` (R: [768, K] random, seeded) in a child process and reports the
run folder's bytes (total and per image), the child's peak resident memory, and the wall time
(with the images per second the command prints). The shards grow with the images; the manifest
and settings (which list the 28,407 components) and the classifier do not, so a shorter run is
extrapolated to 1,000 images as fixed bytes + shard bytes per image × 1,000. Weights are random: size, memory and speed do
not depend on them. The target: 1,000 images under 2 GB on disk, memory bounded (a shard and a
batch, not the run).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

MODEL = "timm:deit_base_patch16_224"
WIDTH = 768
TARGET_GB = 2.0


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=1000, help="images to decompose (default: 1000)")
    p.add_argument("--k", type=int, default=16, help="readout columns (default: 16)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0, help="the readout's and the images' seed")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--keep", type=Path, help="write the run here (default: a temporary folder, removed)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        r = torch.randn(WIDTH, args.k, generator=torch.Generator().manual_seed(args.seed))
        save_file({"R": r.contiguous()}, str(tmp / "R.safetensors"))
        out = args.keep or tmp / "run"
        cmd = [sys.executable, "-m", "fxdecomp", "decompose", MODEL, f"world:{args.images}:{args.seed}",
               "--random-weights", "--granularity", "token", "--readout", str(tmp / "R.safetensors"), "--out",
               str(out), "--batch", str(args.batch), "--device", args.device, "--workers", str(args.workers)]
        print(" ".join(cmd), flush=True)
        t = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
        seconds = time.perf_counter() - t
        if done.returncode != 0:
            print(done.stdout + done.stderr, file=sys.stderr)
            return done.returncode
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
        total = folder_bytes(out)
        shards = folder_bytes(out / "shards")
        rate = re.search(r"([\d.]+) images/s", done.stdout)
        manifest = json.loads((out / "manifest.json").read_text())
        row = dict(model=MODEL, images=args.images, k=args.k, batch=args.batch, device=args.device, seed=args.seed,
                   components=len(manifest["component_table"]), shards=len(manifest["shards"]),
                   disk_bytes=total, shard_bytes=shards, bytes_per_image=total / args.images,
                   peak_rss_mb=peak_mb, wall_s=seconds, images_per_s=float(rate.group(1)) if rate else None,
                   rel_error=manifest["reconstruction"]["max_relative_error"],
                   shard_bytes_per_image=shards / args.images, fixed_bytes=total - shards,
                   extrapolated_1000_gb=((total - shards) + shards / args.images * 1000) / 1e9)
    print(done.stdout.strip())
    print(f"{row['components']} components, K = {args.k}: {total / 1e6:.1f} MB on disk for {args.images} images "
          f"(shards {row['shard_bytes_per_image'] / 1e6:.3f} MB per image, plus {row['fixed_bytes'] / 1e6:.1f} MB "
          f"of manifest, settings and classifier; 1,000 images: {row['extrapolated_1000_gb']:.2f} GB), "
          f"peak RSS {peak_mb:.0f} MB, {seconds:.0f} s wall ({row['images_per_s']} images/s decomposing)")
    verdict = "meets" if row["extrapolated_1000_gb"] < TARGET_GB else "MISSES"
    print(f"target: 1,000 images under {TARGET_GB} GB on disk: {verdict}")
    if args.json:
        args.json.write_text(json.dumps(row, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
