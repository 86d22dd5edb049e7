"""A folder of images: flat, or one subfolder per class (the ImageFolder layout)."""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import InputError
from .identity import file_digest
from .images import fit_image, is_image, read_image
from .registry import SourceType, register_source


class ImageFolder(torch.utils.data.Dataset):
    """Items are dicts: ``image`` (uint8 [3, H, W] at the file's size, or [3, size, size] with ``size``),
    ``path``, ``index`` and, in the class-subfolder layout, ``label`` (the class's index in ``classes``,
    sorted by name).

    Files are listed once, sorted, so the order (and so every image's index) is the same on every run.
    """

    def __init__(self, root: str | Path, size: int | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"{self.root} is not a folder of images")
        self.size = None if size is None else int(size)
        entries = list(self.root.iterdir())
        _refuse_broken_links(entries)
        subdirs = sorted(p for p in entries if p.is_dir() and not p.name.startswith("."))
        top = sorted(p for p in entries if p.is_file() and is_image(p))
        self.classes: list[str] = []
        self.labels: list[int] | None = None
        if subdirs and not top:
            files, labels = [], []
            for c, d in enumerate(subdirs):
                inside = list(d.rglob("*"))
                _refuse_broken_links(inside)
                found = sorted(p for p in inside if p.is_file() and is_image(p))
                files += found
                labels += [c] * len(found)
            self.classes = [d.name for d in subdirs]
            self.labels = labels
        else:
            files = top
        if not files:
            raise InputError(f"no images in {self.root} (looked for {', '.join(('*.png', '*.jpg', '...'))} at the top "
                             "level or one level of class subfolders)")
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        im, digest = read_image(self.files[i])
        item = {"image": fit_image(im, self.size), "digest": digest, "path": str(self.files[i]), "index": i}
        if self.labels is not None:
            item["label"] = self.labels[i]
        return item

    def ids(self) -> list[str]:
        """Each image's path relative to the root: what a run records."""
        return [str(p.relative_to(self.root)) for p in self.files]

    def digest(self, i: int) -> str:
        """The digest of image ``i``'s file (the item's ``digest``), without decoding it."""
        return file_digest(self.files[i])


def _refuse_broken_links(paths) -> None:
    """A symbolic link to nothing would be skipped, and the data set would quietly lose an image."""
    for p in paths:
        if p.is_symlink() and not p.exists() and is_image(p):
            raise InputError(f"{p} is a symbolic link to {p.readlink()}, which does not exist: fix or remove the link")



def _open(spec: str, size: int | None, split: str | None) -> ImageFolder:
    if split is not None:
        raise InputError(f"{spec} has no metadata.csv, so it has no splits; drop --split")
    return ImageFolder(spec, size=size)


def _describe(data: ImageFolder) -> dict:
    labels = {"label": list(data.labels)} if data.labels is not None else {}
    return {"root": str(data.root.resolve()), "size": data.size, "ids": data.ids(), "classes": data.classes,
            "labels": labels}


register_source(SourceType(
    "folder", ImageFolder, names=lambda spec: Path(spec).exists(), open=_open, describe=_describe,
    reopen=lambda rec: ImageFolder(rec["root"], size=rec["size"]), priority=20))
