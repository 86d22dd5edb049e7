"""Decoding image files into batches that stack: RGB, resized and centre-cropped to one square size."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import InputError

#: File endings read as images (anything PIL decodes is accepted when named explicitly).
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def is_image(path: Path) -> bool:
    return path.suffix.lower() in EXTENSIONS and not path.name.startswith(".")


def load_image(path: str | Path, size: int | None = None) -> torch.Tensor:
    """uint8 [3, size, size] (or the file's own size when ``size`` is None): the short side resized to
    ``size`` (bicubic, antialiased) and the centre cropped, as models' eval transforms do."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is not None:
                w, h = im.size
                scale = size / min(w, h)
                new = (max(size, round(w * scale)), max(size, round(h * scale)))
                if new != (w, h):
                    im = im.resize(new, Image.BICUBIC, reducing_gap=None)
                left, top = (new[0] - size) // 2, (new[1] - size) // 2
                im = im.crop((left, top, left + size, top + size))
            arr = np.asarray(im, dtype=np.uint8).copy()
    except FileNotFoundError:
        raise InputError(f"image {path} does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise InputError(f"cannot read image {path} ({err}); remove it from the folder or convert it to PNG/JPEG") \
            from None
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()
