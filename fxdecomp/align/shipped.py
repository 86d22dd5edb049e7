"""CompAlign maps of the world's models into the world CLIP, trained once and shipped, so the demo
puts components into words without training anything.

    python -m fxdecomp.align.shipped --out fxdecomp/assets/world      # world-vit, ~1 min on a CPU
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..compiler import decompose
from ..errors import InputError
from ..preprocessing import transform_for
from ..world.dataset import ALIGN_SEED, World
from ..world.shipped import load
from ..world.shipped import path as model_path
from .clip_space import ClipSpace
from .compalign import CompAlign
from .features import collect
from .representation import representation

ALIGNED = ("world-vit",)
IMAGES = 4000
EPOCHS = 10


def aligner_path(name: str) -> Path:
    if name not in ALIGNED:
        raise InputError(f"no shipped aligner for {name!r}; there are {', '.join(ALIGNED)}")
    return model_path(name).with_name(f"{name}.compalign.safetensors")


def train(name: str, images: int = IMAGES, epochs: int = EPOCHS, seed: int = 0, progress: bool = True):
    """CompAlign (λ = 1, head granularity) of ``name``'s representation into the world CLIP."""
    rep = representation(load(name))
    dm = decompose(rep, "head")
    clip = ClipSpace.world()
    feats = collect(dm, World(images, ALIGN_SEED).arrays()["images"], preprocess=transform_for(rep), clip=clip,
                    progress=progress)
    aligner = CompAlign.for_features(feats, lam=1.0, seed=seed, model_name=name)
    aligner.fit(feats, epochs=epochs, seed=seed, progress=progress)
    return aligner.cpu()


def load_aligner(name: str = "world-vit"):
    """The shipped aligner of ``name`` (head granularity, into ``ClipSpace.world()``)."""
    return CompAlign.load(aligner_path(name), clip_name="world-clip")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Train and write the world models' shipped aligners.")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--models", nargs="+", choices=ALIGNED, default=list(ALIGNED))
    args = p.parse_args(argv)
    torch.manual_seed(0)
    for name in args.models:
        aligner = train(name)
        args.out.mkdir(parents=True, exist_ok=True)
        file = args.out / aligner_path(name).name
        aligner.save(file)
        print(f"wrote {file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
