"""What a run is: the settings that decide its numbers (compared on every rerun) and, once
complete, the manifest that adds every shard's image range and checksum.

A rerun into the same folder must have the same settings, otherwise it would mix two
models' (or two preprocessings') contributions; ``differences`` names what changed.
"""
from __future__ import annotations

import json
import platform

import torch

from .. import __version__
from ..errors import InputError

FORMAT = "fxdecomp.run/2"
#: Keys of the settings whose change makes a different run (everything else is description).
IDENTITY = ("format", "model", "granularity", "layers", "dtype", "preprocess", "data", "components", "shard_images",
            "batch", "readout", "group")


def versions() -> dict:
    import numpy
    import safetensors
    import timm

    out = {"fxdecomp": __version__, "torch": torch.__version__, "timm": timm.__version__,
           "numpy": numpy.__version__, "safetensors": safetensors.__version__, "python": platform.python_version()}
    try:
        import open_clip

        out["open_clip"] = open_clip.__version__
    except ImportError:  # pragma: no cover - a dependency
        pass
    return out


def differences(old: dict, new: dict) -> list[str]:
    """The identity settings that differ, as 'key: old -> new' lines (long values shortened)."""
    out = []
    for key in IDENTITY:
        a, b = old.get(key), new.get(key)
        if a != b:
            if isinstance(a, dict) and isinstance(b, dict):
                sub = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
                out += [f"{key}.{k}: {_short(a.get(k))} -> {_short(b.get(k))}" for k in sub]
            else:
                out.append(f"{key}: {_short(a)} -> {_short(b)}")
    return out


def _short(v) -> str:
    s = json.dumps(v, sort_keys=True)
    return s if len(s) <= 60 else s[:57] + "..."


def check_same(old: dict, new: dict, folder) -> None:
    diff = differences(old, new)
    if diff:
        raise InputError(f"{folder} already holds a different run ({'; '.join(diff[:4])}); write to a new --out "
                         "folder, or delete this one to start over")
