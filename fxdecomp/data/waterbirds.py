"""A Waterbirds-layout folder: images plus ``metadata.csv`` with ``img_filename, y, place, split``.

``y`` is the label, ``place`` the spurious attribute (0/1), ``split`` 0 train, 1 validation,
2 test (the layout of Sagawa et al.'s release). The group of an image is ``2 * y + place``.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from .identity import file_digest
from .images import fit_image, read_image
from .registry import SourceType, register_source

SPLITS = {"train": 0, "val": 1, "validation": 1, "test": 2}
COLUMNS = ("img_filename", "y", "place", "split")


def is_waterbirds(root: str | Path) -> bool:
    return (Path(root) / "metadata.csv").is_file()


class WaterbirdsFolder(torch.utils.data.Dataset):
    """Items are dicts: ``image`` (uint8 [3, H, W], or [3, size, size] with ``size``), ``target`` (y), ``place``, ``group``,
    ``split``, ``path``, ``index``. ``split`` ("train", "val", "test" or None for all) selects rows."""

    def __init__(self, root: str | Path, split: str | None = None, size: int | None = None):
        self.root = Path(root)
        meta = self.root / "metadata.csv"
        if not meta.is_file():
            raise InputError(f"{self.root} has no metadata.csv (a Waterbirds-layout folder needs one with columns "
                             f"{', '.join(COLUMNS)})")
        if split is not None and split not in SPLITS:
            raise InputError(f"unknown split {split!r}; use one of train, val, test")
        with open(meta, newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise InputError(f"{meta} lacks column(s) {missing}; it needs {', '.join(COLUMNS)}")
            rows = list(reader)
        try:
            parsed = [(r["img_filename"], int(r["y"]), int(r["place"]), int(r["split"])) for r in rows]
        except ValueError as err:
            raise InputError(f"{meta}: y, place and split must be integers ({err})") from None
        if split is not None:
            parsed = [p for p in parsed if p[3] == SPLITS[split]]
        if not parsed:
            raise InputError(f"{meta} lists no images" + (f" in split {split!r}" if split else ""))
        self.split, self.size = split, None if size is None else int(size)
        self.files = [self.root / p[0] for p in parsed]
        self.targets = np.array([p[1] for p in parsed])
        self.places = np.array([p[2] for p in parsed])
        self.splits = np.array([p[3] for p in parsed])
        bad = sorted(set(self.places) - {0, 1})
        if bad:
            raise InputError(f"{meta}: place must be 0 or 1, found {bad}")
        self.groups = 2 * self.targets + self.places

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        im, digest = read_image(self.files[i])
        return {"image": fit_image(im, self.size), "digest": digest, "target": int(self.targets[i]),
                "place": int(self.places[i]), "group": int(self.groups[i]), "split": int(self.splits[i]),
                "path": str(self.files[i]), "index": i}

    def ids(self) -> list[str]:
        return [str(p.relative_to(self.root)) for p in self.files]

    def digest(self, i: int) -> str:
        """The digest of image ``i``'s file (the item's ``digest``), without decoding it."""
        return file_digest(self.files[i])


def _describe(data: WaterbirdsFolder) -> dict:
    return {"root": str(data.root.resolve()), "split": data.split, "size": data.size, "ids": data.ids(),
            "labels": {"target": data.targets.tolist(), "place": data.places.tolist(), "group": data.groups.tolist(),
                       "split": data.splits.tolist()}}


register_source(SourceType(
    "waterbirds", WaterbirdsFolder, names=lambda spec: Path(spec).exists() and is_waterbirds(spec),
    open=lambda spec, size, split: WaterbirdsFolder(spec, split=split, size=size), describe=_describe,
    reopen=lambda rec: WaterbirdsFolder(rec["root"], split=rec["split"], size=rec["size"]), priority=10))
