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
#: The world's CLIPs (``load_clip`` takes either): world-clip is also a model to decompose;
#: world-clip-l is the strong target space, the stand-in for the paper's ViT-L/14.
CLIP_NAMES = ("world-clip", "world-clip-l")
#: Models the package knows but does not ship yet, and the command that trains each (on a GPU).
TRAIN_COMMANDS = {"world-clip-l": "python -m fxdecomp.world.train --out fxdecomp/assets/world --models clip-l"}
DESCRIPTIONS = {
    "world-vit": "ViT (timm VisionTransformer, 6 blocks, width 128) trained to classify every attribute",
    "world-swin": "Swin (timm SwinTransformer, 3 stages) trained to classify every attribute",
    "world-ssl": "ViT trained self-supervised (SimCLR-style); returns features (linear probe: load_probe())",
    "world-clip": "image tower of the small CLIP (open_clip CLIP) trained on captions; load_clip() gives both towers",
    "world-spurious": "world-vit backbone with a shape-family head trained on the 95%-spurious split",
}


def path(name: str) -> Path:
    """The shipped file of ``name``; a known model that is not shipped yet raises with the
    command that trains it."""
    if name not in NAMES + tuple(TRAIN_COMMANDS):
        raise InputError(f"no shipped world model {name!r}; there are {', '.join(NAMES)}")
    file = Path(str(resources.files("fxdecomp") / "assets" / "world" / f"{name}.safetensors"))
    if name in TRAIN_COMMANDS and not file.is_file():
        raise InputError(f"{name} is not shipped yet: train it on a GPU with `{TRAIN_COMMANDS[name]}` (from the "
                         f"repository root), which writes {file.name} into fxdecomp/assets/world/ (where it is "
                         f"loaded from), or load a "
                         f"trained file with load_clip({name!r}, path=FILE) / ClipSpace.world({name!r}, path=FILE)")
    return file


def read_record(file: str | Path) -> dict:
    """The training and metrics record in a file written by ``fxdecomp.world.train``."""
    try:
        with safe_open(str(file), "pt") as f:
            meta = f.metadata() or {}
    except Exception as err:  # noqa: BLE001 - safetensors' own error types
        raise InputError(f"{file} is not a weights file written by fxdecomp.world.train ({type(err).__name__}: "
                         f"{str(err)[:120]})") from None
    if "record" not in meta:
        raise InputError(f"{file} has no training record: it was not written by fxdecomp.world.train")
    return json.loads(meta["record"])


def record(name: str) -> dict:
    """How the model was trained and the accuracy it was measured at."""
    return read_record(path(name))


def _build(name: str, rec: dict | None = None) -> torch.nn.Module:
    if name == "world-vit":
        return models.vit()
    if name == "world-swin":
        return models.swin()
    if name == "world-ssl":
        return models.vit(num_classes=0, name="world-ssl")
    if name == "world-spurious":
        return models.vit(num_classes=2, name="world-spurious")
    if name == "world-clip-l":  # the record holds its shape: scaled-down runs load too
        return models.clip_l(**(rec or {}).get("architecture", {}))
    return models.clip()


def _load(name: str, file: Path | None = None) -> torch.nn.Module:
    file = path(name) if file is None else file
    model = _build(name, read_record(file))
    state = {k: v for k, v in load_file(str(file)).items() if not k.startswith("probe.")}
    model.load_state_dict(state, strict=True)
    return model.eval()


def load(name: str) -> torch.nn.Module:
    """The image model to decompose (for a CLIP: its image tower)."""
    model = _load(name)
    return model.visual if name in CLIP_NAMES else model


def load_clip(name: str = "world-clip", path: str | Path | None = None):
    """(a world CLIP with both towers, the tokenizer it was trained with).

    ``name`` is ``world-clip`` or ``world-clip-l``; ``path`` loads that model from a file written
    by ``python -m fxdecomp.world.train`` instead of the shipped one (world-clip-l, until it ships)."""
    if name not in CLIP_NAMES:
        raise InputError(f"no world CLIP {name!r}; there are {', '.join(CLIP_NAMES)}")
    file = _clip_file(name, path)
    spec = read_record(file).get("tokenizer")
    tok = WordTokenizer(spec["words"], spec["context_length"]) if spec else models.tokenizer()
    return _load(name, file), tok


def _clip_file(name: str, file: str | Path | None) -> Path:
    """The shipped file, or ``file`` after checking that it holds ``name``."""
    if file is None:
        return path(name)
    file = Path(file)
    if not file.is_file():
        raise InputError(f"no file {file}; train one with `python -m fxdecomp.world.train --out DIR "
                         f"--models {name.removeprefix('world-')}`")
    held = read_record(file).get("name")
    if held != name:
        raise InputError(f"{file} holds {held}, not {name}: call load_clip({held!r}, path=...)")
    return file


def load_probe() -> torch.nn.Linear:
    """The linear attribute probe fitted on world-ssl's features."""
    state = load_file(str(path("world-ssl")))
    probe = torch.nn.Linear(state["probe.weight"].shape[1], state["probe.weight"].shape[0])
    probe.load_state_dict({"weight": state["probe.weight"], "bias": state["probe.bias"]})
    return probe.eval()
