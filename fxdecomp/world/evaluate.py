"""Accuracy of the world's models on fixed evaluation splits.

The same functions record the numbers at training time and check them when a
shipped model is loaded, so "reproduces its recorded accuracy" means the same
code on the same images.
"""
from __future__ import annotations

import numpy as np
import torch

from .attributes import CATEGORICAL
from .captions import prompts
from .dataset import EVAL_SEED, SPURIOUS_TEST_SEED, World
from .models import MEAN, STD, split_logits

EVAL_SIZE = 1000
SPURIOUS_TEST_SIZE = 1000


def eval_split(size: int = EVAL_SIZE) -> dict:
    return World(size, EVAL_SEED).arrays()


def spurious_test_split(size: int = SPURIOUS_TEST_SIZE) -> dict:
    return World(size, SPURIOUS_TEST_SEED, spurious=0.5).arrays()


def to_input(images: np.ndarray | torch.Tensor, device=None, dtype=torch.float32) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> normalised float [N, 3, H, W]."""
    x = torch.as_tensor(images).to(device).permute(0, 3, 1, 2).to(dtype) / 255.0
    mean = torch.tensor(MEAN, device=x.device, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device, dtype=dtype).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def batched(fn, images: np.ndarray, batch: int = 256, device=None) -> torch.Tensor:
    outs = [fn(to_input(images[i:i + batch], device)).float().cpu() for i in range(0, len(images), batch)]
    return torch.cat(outs)


def attribute_accuracy(logits: torch.Tensor, data: dict) -> dict[str, float]:
    parts = split_logits(logits)
    return {k: float((parts[k].argmax(1).numpy() == data[k]).mean()) for k in CATEGORICAL}


def classifier_metrics(model, data: dict | None = None, device=None) -> dict[str, float]:
    data = data or eval_split()
    return attribute_accuracy(batched(model, data["images"], device=device), data)


def probe_metrics(model, probe: torch.nn.Linear, data: dict | None = None, device=None) -> dict[str, float]:
    data = data or eval_split()
    feats = batched(model, data["images"], device=device)
    with torch.no_grad():
        return attribute_accuracy(probe.float().cpu()(feats), data)


@torch.no_grad()
def zero_shot_metrics(clip_model, tokenizer, data: dict | None = None, device=None) -> dict[str, float]:
    data = data or eval_split()
    img = batched(lambda x: clip_model.encode_image(x, normalize=True), data["images"], device=device)
    out = {}
    for attr in CATEGORICAL:
        tokens = tokenizer(prompts(attr)).to(device)
        txt = clip_model.encode_text(tokens, normalize=True).float().cpu()
        pred = (img @ txt.T).argmax(1).numpy()
        out[attr] = float((pred == data[attr]).mean())
    return out


def spurious_metrics(model, data: dict | None = None, device=None) -> dict[str, float]:
    data = data or spurious_test_split()
    pred = batched(model, data["images"], device=device).argmax(1).numpy()
    correct = pred == data["target"]
    per_group = [float(correct[data["group"] == g].mean()) for g in range(4)]
    return {"worst_group": min(per_group), "average_group": float(np.mean(per_group)),
            **{f"group{g}": a for g, a in enumerate(per_group)}}
