"""``fxdecomp demo``: decompose a model on a few images and show what came out."""
from __future__ import annotations

import time

import torch

from .compiler import decompose
from .models_registry import DEFAULT, input_size_of, load


def demo_images(shape: tuple[int, ...], n: int, seed: int = 0) -> torch.Tensor:
    """Deterministic images: smooth colour gradients with a bright square each."""
    g = torch.Generator().manual_seed(seed)
    c, h, w = shape
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    out = []
    for _ in range(n):
        a = torch.rand(c, 3, generator=g)
        img = a[:, :1, None] * yy + a[:, 1:2, None] * xx + a[:, 2:, None] * 0.5
        s = int(torch.randint(h // 4, h // 2, (1,), generator=g))
        top, left = (int(torch.randint(0, h - s, (1,), generator=g)), int(torch.randint(0, w - s, (1,), generator=g)))
        img[:, top:top + s, left:left + s] = torch.rand(c, 1, 1, generator=g)
        out.append(img)
    x = torch.stack(out)
    return (x - x.mean()) / x.std()


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
    x = demo_images(input_size_of(model), batch).to(dtype)
    with torch.inference_mode():
        out = dm(x)
        ref = model(x)
    err = float(((out.total() - ref).flatten(1).double().norm(dim=1) / ref.flatten(1).double().norm(dim=1)).max())
    print(f"\n{top} largest components (mean norm over {batch} generated images):")
    print(out.table(k=top))
    print(f"\nreconstruction: sum of {len(dm.components)} components vs model output, "
          f"max relative error {err:.2e} ({str(dtype).removeprefix('torch.')})")
    return err
