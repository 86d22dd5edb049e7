"""Image files as uint8 tensors: decoded faithfully to 8-bit RGB (``read_image``), then, only where a
square size is asked for, resized and centre-cropped to it (``fit_image``); ``load_image`` does both.
A model's own resize and crop is applied later, where batches are made (``fxdecomp.preprocessing``).

Decoding is where a wrong number starts quietly: a 16-bit PNG converted the way PIL converts it
saturates to white, a float TIFF becomes black, a photo with an EXIF orientation lies on its side.
``read_image`` maps 16-bit samples and 0..1 floats onto 0..255, applies the EXIF orientation, and
refuses what it cannot map without guessing (32-bit integers, floats outside 0..1, images above
PIL's decompression-bomb limit). It also returns the digest of the file's bytes, hashed while they
are read: what a run records to know later that an image is still the one it decomposed.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InputError
from ..hashing import bytes_digest
from ..preprocessing import square

#: File endings read as images (anything PIL decodes is accepted when named explicitly).
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I;16S")
FIX = "remove it from the folder or convert it to an 8-bit PNG/JPEG"


def is_image(path: Path) -> bool:
    return path.suffix.lower() in EXTENSIONS and not path.name.startswith(".")


def read_image(path: str | Path) -> tuple[Image.Image, str]:
    """(the image as 8-bit RGB, the digest of the file's bytes), oriented as its EXIF says."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"image {path} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a folder, not an image") from None
    except OSError as err:
        raise InputError(f"cannot read image {path} ({err.strerror})") from None
    return decode_image(raw, path), bytes_digest(raw)


def decode_image(raw: bytes, name: str | Path = "image") -> Image.Image:
    """The bytes of an image file as an 8-bit RGB image (see the module docstring)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw)) as im:
                sixteen = im.mode in SIXTEEN_BIT or (im.mode == "I" and "16" in _rawmode(im))
                im.load()
                im = ImageOps.exif_transpose(im)
                return _to_rgb(im, sixteen, name)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        w, h = _size(raw)
        raise InputError(f"image {name} has {w}x{h} = {w * h:,} pixels, more than PIL's decompression-bomb limit of "
                         f"{Image.MAX_IMAGE_PIXELS:,}: downscale it first (or, from Python, raise "
                         "PIL.Image.MAX_IMAGE_PIXELS if you trust the file)") from None
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError(f"cannot read image {name} (not an image format PIL reads, or a damaged file); {FIX}") \
            from None
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise InputError(f"cannot read image {name} ({err}); {FIX}") from None


def _to_rgb(im: Image.Image, sixteen: bool, name) -> Image.Image:
    if sixteen:  # 0..65535 onto 0..255 (PIL's own convert clips it at 255)
        a = np.asarray(im, dtype=np.float64)
        if a.min() < 0 or a.max() > 65535:
            raise InputError(f"image {name} holds values outside 0..65535 in a 16-bit image; {FIX}")
        return Image.fromarray(np.round(a / 257.0).astype(np.uint8), "L").convert("RGB")
    if im.mode == "I":
        raise InputError(f"image {name} has 32-bit integer pixels, whose range is not known; {FIX}")
    if im.mode == "F":  # floats are read as 0..1 intensities (PIL's own convert truncates them to 0)
        a = np.asarray(im, dtype=np.float64)
        if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            finite = a[np.isfinite(a)]
            lo, hi = (finite.min(), finite.max()) if finite.size else (np.nan, np.nan)
            raise InputError(f"image {name} has floating-point pixels in [{lo:.4g}, {hi:.4g}] (or non-finite ones); "
                             f"only 0..1 floats are read: {FIX}")
        return Image.fromarray(np.round(a * 255.0).astype(np.uint8), "L").convert("RGB")
    return im.convert("RGB")


def _rawmode(im: Image.Image) -> str:
    """How the file stores its samples (e.g. ``I;16B``), read before the image is loaded."""
    for tile in im.tile or ():
        args = tile.args if hasattr(tile, "args") else tile[3]
        first = args[0] if isinstance(args, tuple) and args else args
        if isinstance(first, str):
            return first
    return ""


def _size(raw: bytes) -> tuple[int, int]:
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # only to read the header's size
    try:
        with Image.open(io.BytesIO(raw)) as im:
            return im.size
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def fit_image(im: Image.Image, size: int | None = None) -> torch.Tensor:
    """uint8 [3, H, W] at the image's own size, or with ``size`` [3, size, size]: the short side resized
    to ``size`` and the centre cropped (``fxdecomp.preprocessing.square``, the one resize path). A
    model's own resize and crop is applied later, once, where batches are made."""
    if size is not None:
        return square(size).resize_crop(im)
    arr = np.asarray(im, dtype=np.uint8).copy()
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def load_image(path: str | Path, size: int | None = None) -> torch.Tensor:
    """uint8 [3, H, W] (or [3, size, size]): ``read_image`` then ``fit_image``."""
    return fit_image(read_image(path)[0], size)
