"""What the commands share: loading a model by name, choosing a device, one-line errors."""
from __future__ import annotations

import argparse
import os

import torch

from ..errors import InputError


def formatter(prog):
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", help="local weights file (.safetensors, .pth, .bin) for the model")
    p.add_argument("--pretrained", action="store_true", help="download the library's pretrained weights")
    p.add_argument("--num-classes", type=int, default=None,
                   help="timm models: classes of the checkpoint's classifier (default: none, features only)")


def load_model(name: str, args) -> torch.nn.Module:
    from ..models_registry import load

    kwargs = {}
    if getattr(args, "num_classes", None) is not None:
        if name.split(":")[0] not in ("timm",) and ":" in name:
            raise InputError("--num-classes applies to timm models only")
        kwargs["num_classes"] = args.num_classes
    return load(name, checkpoint=args.checkpoint, pretrained=args.pretrained, **kwargs)


def device_of(name: str | None) -> torch.device:
    """The requested device (default: CUDA when there is one); under torchrun, this process's GPU."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError("--device cuda but no GPU is visible here; use --device cpu")
        if dev.index is None and "LOCAL_RANK" in os.environ:
            dev = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return dev


def positive(kind=int):
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return v

    return parse
