"""Shared helpers: small random models, error measures, hypothesis settings."""
from __future__ import annotations

import os
import warnings

import pytest
import timm
import torch
from hypothesis import HealthCheck, settings

from fxdecomp.models_registry import perturb_

warnings.filterwarnings("ignore", message="No pretrained weights loaded")

# pytest-xdist runs one worker per core (pyproject's addopts): each takes its share of the
# cores, so the workers' thread pools do not outnumber them and wait on each other.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _WORKERS))

settings.register_profile(
    "fxdecomp", deadline=None, max_examples=int(os.environ.get("FXDECOMP_EXAMPLES", "10")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], derandomize=True)
settings.load_profile("fxdecomp")

F32_BOUND = 1e-5
F64_BOUND = 1e-10


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest per-sample relative error ‖a − b‖ / ‖b‖."""
    n = b.shape[0]
    d = (a - b).detach().reshape(n, -1).double().norm(dim=1)
    r = b.detach().reshape(n, -1).double().norm(dim=1).clamp_min(1e-300)
    return float((d / r).max())


def bound(dtype: torch.dtype) -> float:
    return F64_BOUND if dtype == torch.float64 else F32_BOUND


def jitter_(model: torch.nn.Module, scale: float = 0.2, seed: int = 0) -> torch.nn.Module:
    """Perturb every parameter and BatchNorm statistic (norm weights of 1, biases of 0 and
    zero-init tokens would hide mistakes in how constants are split off)."""
    return perturb_(model, scale=scale, seed=seed)


def assert_regroups(outs: dict, ref: torch.Tensor, dtype: torch.dtype) -> None:
    """Token components sum to head components, head components to branches."""
    tol = dict(rtol=0, atol=bound(dtype) * float(ref.abs().max()) * 10)
    for fine, coarse, how in (("token", "head", "head"), ("head", "block", "branch")):
        grouped = outs[fine].group(how)
        assert grouped.components.names == outs[coarse].components.names
        torch.testing.assert_close(grouped.contributions, outs[coarse].contributions, **tol)


def exact_at_every_granularity(model: torch.nn.Module, x: torch.Tensor,
                               granularities=("block", "head", "token")) -> tuple[torch.Tensor, dict]:
    """(the model's output, {granularity: decomposition of x}), each decomposition checked to
    sum to that output within the dtype's bound."""
    import fxdecomp

    with torch.no_grad():
        ref = model(x)
        outs = {g: fxdecomp.decompose(model, g, input_size=tuple(x.shape[1:]))(x) for g in granularities}
    for g, out in outs.items():
        assert rel_err(out.total(), ref) <= bound(x.dtype), g
    return ref, outs


def small_vit(seed: int = 0, **kw) -> torch.nn.Module:
    cfg = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=0)
    cfg.update(kw)
    torch.manual_seed(seed)
    m = timm.models.vision_transformer.VisionTransformer(**cfg).eval()
    return jitter_(m, seed=seed)


def images(dm_or_shape, batch: int = 3, dtype=torch.float32, seed: int = 1) -> torch.Tensor:
    shape = dm_or_shape.input_shape if hasattr(dm_or_shape, "input_shape") else tuple(dm_or_shape)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *shape, generator=g, dtype=dtype)


@pytest.fixture
def tiny_vit():
    return small_vit()


def cli(capsys, *args) -> tuple[int, str, str]:
    """Run the command line in-process: (exit code, stdout, stderr)."""
    from fxdecomp.cli import main
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line(err: str) -> str:
    """The one line a refusal prints (no traceback)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def write_waterbirds(root, splits) -> None:
    """A Waterbirds-layout folder of world images, one (count, spurious correlation, seed) per split."""
    import csv

    from PIL import Image

    from fxdecomp.data import WorldSpurious
    rows = [("img_filename", "y", "place", "split")]
    for split, (n, p, seed) in enumerate(splits):
        data = WorldSpurious(n, seed, p)
        for i in range(n):
            name = f"s{split}/{i:03d}.png"
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(data[i]["image"].permute(1, 2, 0).numpy()).save(root / name)
            rows.append((name, int(data.targets[i]), int(data.places[i]), split))
    with open(root / "metadata.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
