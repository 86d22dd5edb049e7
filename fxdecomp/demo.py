"""``fxdecomp demo``: decompose a model on a few images and show what came out."""
from __future__ import annotations

import time

import torch

from .compiler import decompose
from .models_registry import DEFAULT, load, transform_for
from .world import EVAL_SEED, World


def demo_images(model: torch.nn.Module, n: int) -> tuple[torch.Tensor, list[str]]:
    """The first ``n`` images of the world's evaluation split, prepared for ``model``, and their captions."""
    world = World(n, EVAL_SEED)
    raw = [world.raw(i) for i in range(n)]
    images = torch.stack([torch.from_numpy(img).permute(2, 0, 1) for _, img, _, _ in raw])
    return transform_for(model)(images), [text for *_, text in raw]


def run(model_name: str = DEFAULT, granularity: str = "head", batch: int = 4, top: int = 12,
        float64: bool = False, checkpoint: str | None = None, pretrained: bool = False) -> float:
    """Print the component table and the reconstruction error; returns the error."""
    model = load(model_name, checkpoint=checkpoint, pretrained=pretrained)
    dtype = torch.float64 if float64 else torch.float32
    model = model.to(dtype)
    print(f"model: {model_name} ({type(model).__name__}, {sum(p.numel() for p in model.parameters()):,} parameters)")
    t0 = time.perf_counter()
    dm = decompose(model, granularity)
    print(f"compiled in {time.perf_counter() - t0:.1f} s: {dm.summary()}")
    x, captions = demo_images(model, batch)
    x = x.to(dtype)
    print(f"images: the first {batch} of the synthetic world's evaluation split, e.g. " +
          "; ".join(f"'{c}'" for c in captions[:3]))
    with torch.inference_mode():
        out = dm(x)
        ref = model(x)
    err = float(((out.total() - ref).flatten(1).double().norm(dim=1) / ref.flatten(1).double().norm(dim=1)).max())
    print(f"\n{top} largest components (mean norm over the {batch} images):")
    print(out.table(k=top))
    print(f"\nreconstruction: sum of {len(dm.components)} components vs model output, "
          f"max relative error {err:.2e} ({str(dtype).removeprefix('torch.')})")
    return err
