"""The trained models shipped with the package, loaded offline by name."""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ..errors import InputError
from . import models
from .captions import WordTokenizer

NAMES = ("world-vit", "world-swin", "world-ssl", "world-clip", "world-spurious")
DESCRIPTIONS = {
    "world-vit": "ViT (timm VisionTransformer, 6 blocks, width 128) trained to classify every attribute",
    "world-swin": "Swin (timm SwinTransformer, 3 stages) trained to classify every attribute",
    "world-ssl": "ViT trained self-supervised (SimCLR-style); returns features (linear probe: load_probe())",
    "world-clip": "image tower of the small CLIP (open_clip CLIP) trained on captions; load_clip() gives both towers",
    "world-spurious": "world-vit backbone with a shape-family head trained on the 95%-spurious split",
}


def path(name: str) -> Path:
    if name not in NAMES:
        raise InputError(f"no shipped world model {name!r}; there are {', '.join(NAMES)}")
    return Path(str(resources.files("fxdecomp") / "assets" / "world" / f"{name}.safetensors"))


def record(name: str) -> dict:
    """How the model was trained and the accuracy it was measured at."""
    with safe_open(str(path(name)), "pt") as f:
        return json.loads(f.metadata()["record"])


def _build(name: str) -> torch.nn.Module:
    if name == "world-vit":
        return models.vit()
    if name == "world-swin":
        return models.swin()
    if name == "world-ssl":
        return models.vit(num_classes=0, name="world-ssl")
    if name == "world-spurious":
        return models.vit(num_classes=2, name="world-spurious")
    return models.clip()


def _load(name: str) -> torch.nn.Module:
    model = _build(name)
    state = {k: v for k, v in load_file(str(path(name))).items() if not k.startswith("probe.")}
    model.load_state_dict(state, strict=True)
    return model.eval()


def load(name: str) -> torch.nn.Module:
    """The image model to decompose (for the CLIP: its image tower)."""
    model = _load(name)
    return model.visual if name == "world-clip" else model


def load_clip():
    """(the small CLIP with both towers, the tokenizer it was trained with)."""
    spec = record("world-clip").get("tokenizer")
    tok = WordTokenizer(spec["words"], spec["context_length"]) if spec else models.tokenizer()
    return _load("world-clip"), tok


def load_probe() -> torch.nn.Linear:
    """The linear attribute probe fitted on world-ssl's features."""
    state = load_file(str(path("world-ssl")))
    probe = torch.nn.Linear(state["probe.weight"].shape[1], state["probe.weight"].shape[0])
    probe.load_state_dict({"weight": state["probe.weight"], "bias": state["probe.bias"]})
    return probe.eval()
