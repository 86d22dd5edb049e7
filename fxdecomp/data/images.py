"""Decoding image files into batches that stack: RGB, resized and centre-cropped to one square size."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import InputError
from ..preprocessing import square

#: File endings read as images (anything PIL decodes is accepted when named explicitly).
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def is_image(path: Path) -> bool:
    return path.suffix.lower() in EXTENSIONS and not path.name.startswith(".")


def load_image(path: str | Path, size: int | None = None) -> torch.Tensor:
    """uint8 [3, H, W] at the file's own size, or with ``size`` [3, size, size]: the short side resized
    to ``size`` and the centre cropped (``fxdecomp.preprocessing.square``, the one resize path). A
    model's own resize and crop is applied later, once, where batches are made."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is not None:
                return square(size).resize_crop(im)
            arr = np.asarray(im, dtype=np.uint8).copy()
    except FileNotFoundError:
        raise InputError(f"image {path} does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise InputError(f"cannot read image {path} ({err}); remove it from the folder or convert it to PNG/JPEG") \
            from None
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()
