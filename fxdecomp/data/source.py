"""Opening a data source by name, as the command line gives it.

* ``world:N[:SEED]``: N images of the synthetic world (default seed: the evaluation split's);
* a folder with ``metadata.csv``: the Waterbirds layout;
* any other folder: images, flat or one subfolder per class.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .folder import ImageFolder
from .waterbirds import WaterbirdsFolder, is_waterbirds
from .world import DEFAULT_SEED, WorldImages


def parse_world(spec: str) -> tuple[int, int]:
    parts = spec.split(":")
    try:
        n = int(parts[1])
        seed = int(parts[2]) if len(parts) > 2 else DEFAULT_SEED
    except (IndexError, ValueError):
        raise InputError(f"bad world data {spec!r}: write world:N or world:N:SEED, e.g. world:500:3") from None
    if len(parts) > 3:
        raise InputError(f"bad world data {spec!r}: write world:N or world:N:SEED")
    return n, seed


def open_data(spec: str, size: int | None = None, split: str | None = None):
    """The data set ``spec`` names. Folders' images come at their own size (a model's preprocessing
    resizes them, once), or with ``size`` resized and centre-cropped to that square first."""
    if spec.startswith("world:"):
        return WorldImages(*parse_world(spec))
    root = Path(spec)
    if not root.exists():
        raise InputError(f"data {spec!r} is neither world:N[:SEED] nor an existing folder")
    if is_waterbirds(root):
        return WaterbirdsFolder(root, split=split, size=size)
    if split is not None:
        raise InputError(f"{spec} has no metadata.csv, so it has no splits; drop --split")
    return ImageFolder(root, size=size)


def describe_source(data) -> dict:
    """What a run records about its data: kind, where, and each image's id and labels."""
    if isinstance(data, WorldImages):
        return {"kind": "world", "n": data.n, "seed": data.seed, "ids": data.ids(), "labels": data.labels()}
    if isinstance(data, WaterbirdsFolder):
        return {"kind": "waterbirds", "root": str(data.root.resolve()), "split": data.split, "size": data.size,
                "ids": data.ids(), "labels": {"target": data.targets.tolist(), "place": data.places.tolist(),
                                              "group": data.groups.tolist(), "split": data.splits.tolist()}}
    if isinstance(data, ImageFolder):
        labels = {"label": list(data.labels)} if data.labels is not None else {}
        return {"kind": "folder", "root": str(data.root.resolve()), "size": data.size, "ids": data.ids(),
                "classes": data.classes, "labels": labels}
    if callable(getattr(data, "ids", None)):  # any other data set that names its images
        labels = data.labels() if callable(getattr(data, "labels", None)) else {}
        return {"kind": type(data).__name__, "ids": list(data.ids()), "labels": labels}
    raise InputError(f"cannot describe a data source of type {type(data).__name__}: give it an ids() method "
                     "returning one name per image (and optionally labels() returning {name: [value per image]})")
