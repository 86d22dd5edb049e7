"""CompAlign maps of the world's models into the world CLIP, trained once and shipped, so the demo
puts components into words and ranks them without training anything: the per-component maps
(λ = 1, for descriptions) and the shared map (one map for every component, λ = 0, for rankings;
docs/ALIGN.md). Both are trained on the same images, with the same seed and settings, on the CPU:

    python -m fxdecomp.world.aligners --out fxdecomp/assets/world                    # both, ~2 min on a CPU
    python -m fxdecomp.world.aligners --out fxdecomp/assets/world --variants shared  # the shared map only
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..errors import InputError
from .dataset import ALIGN_SEED, World
from .shipped import path as model_path

ALIGNED = ("world-vit",)
IMAGES = 4000
EPOCHS = 10
#: Each shipped variant: (CompAlign variant, λ, file name suffix).
VARIANTS = {"per_component": ("per_component", 1.0, "compalign"), "shared": ("shared", 0.0, "shared.compalign")}


def aligner_path(name: str, variant: str = "per_component") -> Path:
    if name not in ALIGNED:
        raise InputError(f"no shipped aligner for {name!r}; there are {', '.join(ALIGNED)}")
    if variant not in VARIANTS:
        raise InputError(f"variant must be one of {tuple(VARIANTS)}, got {variant!r}")
    return model_path(name).with_name(f"{name}.{VARIANTS[variant][2]}.safetensors")


def features(name: str, images: int = IMAGES, progress: bool = True):
    """``name``'s representation at head granularity on World(images, ALIGN_SEED), with world-CLIP targets."""
    from ..align import ClipSpace, collect, representation
    from ..compiler import decompose
    from ..models_registry import transform_for
    from .shipped import load

    rep = representation(load(name))
    dm = decompose(rep, "head")
    return collect(dm, World(images, ALIGN_SEED).arrays()["images"], preprocess=transform_for(rep),
                   clip=ClipSpace.world(), progress=progress)


def train(name: str, images: int = IMAGES, epochs: int = EPOCHS, seed: int = 0, progress: bool = True,
          variant: str = "per_component", feats=None):
    """CompAlign of ``name``'s representation into the world CLIP at head granularity: the
    per-component maps (λ = 1) or the shared map (λ = 0)."""
    from ..align import CompAlign

    aligner_path(name, variant)  # checks both
    kind, lam, _ = VARIANTS[variant]
    feats = features(name, images, progress) if feats is None else feats
    aligner = CompAlign.for_features(feats, variant=kind, lam=lam, seed=seed, model_name=name)
    aligner.fit(feats, epochs=epochs, seed=seed, progress=progress)
    return aligner.cpu()


def load_aligner(name: str = "world-vit", variant: str = "per_component"):
    """A shipped aligner of ``name`` (head granularity, into ``ClipSpace.world()``): the per-component
    maps, or with ``variant="shared"`` the shared map rankings read."""
    from ..align import CompAlign

    return CompAlign.load(aligner_path(name, variant), clip_name="world-clip")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Train and write the world models' shipped aligners.")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--models", nargs="+", choices=ALIGNED, default=list(ALIGNED))
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    args = p.parse_args(argv)
    torch.manual_seed(0)
    for name in args.models:
        feats = features(name)
        for variant in args.variants:
            aligner = train(name, variant=variant, feats=feats)
            args.out.mkdir(parents=True, exist_ok=True)
            file = args.out / aligner_path(name, variant).name
            aligner.save(file)
            print(f"wrote {file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
