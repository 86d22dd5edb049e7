"""What an image is, beyond its name: the digest of its file's bytes (the synthetic world's: of its
pixels). Items carry it as ``digest``; a run records it for every image, so a resume, or a reader
going back to the images, can tell that a file was replaced under the same name.

Any data set can take part: items with a ``digest`` are checked, and a ``digest(i)`` method lets
an image be checked without decoding it. Data sets without them are not checked (the run says so).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InputError
from ..hashing import bytes_digest


def file_digest(path) -> str:
    """The digest of a file's bytes (as ``read_image`` returns it)."""
    try:
        with open(path, "rb") as f:
            return bytes_digest(f.read())
    except OSError as err:
        raise InputError(f"cannot read image {path} ({err.strerror})") from None


def pixels_digest(pixels: np.ndarray) -> str:
    """The digest of an image held as an array (its shape, dtype and bytes)."""
    a = np.ascontiguousarray(pixels)
    return bytes_digest(f"{a.dtype.str}{a.shape}".encode() + a.tobytes())


def digest_of(data, i: int) -> str | None:
    """Image ``i``'s digest, from the data set's ``digest(i)`` (no decoding) or its item; None if it has none."""
    own = getattr(data, "digest", None)
    if callable(own):
        return own(i)
    item = data[i]
    return item.get("digest") if isinstance(item, dict) else None


def changed_image(expected: str | None, found: str | None, name: str,
                  fix: str = "decompose the images again into a new run") -> InputError | None:
    """The error for an image whose content is not the recorded one (None if it is, or if nothing was recorded)."""
    if expected is None or found == expected:
        return None
    return InputError(f"image {name} has changed since the run decomposed it (its content digest is "
                      f"{str(found)[:12]}, the run recorded {expected[:12]}): restore the original file, or {fix}")


class CheckedData:
    """A data set whose items are checked against recorded digests as they are read.

    Everything else (``ids()``, ``masks()``, ``size``, ...) is the wrapped data set's.
    """

    def __init__(self, data, digests: Sequence[str | None], ids: Sequence[str]):
        if len(digests) != len(data):
            raise InputError(f"{len(digests)} recorded digests for a data set of {len(data)} images")
        self.data, self.digests, self.names = data, list(digests), list(ids)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        item = self.data[i]
        found = item.get("digest") if isinstance(item, dict) else None
        err = changed_image(self.digests[i], found, self.names[i])
        if err is not None:
            raise err
        return item

    def __getattr__(self, name):
        if name in ("data", "digests", "names"):  # not set yet (unpickling in a DataLoader worker)
            raise AttributeError(name)
        return getattr(self.data, name)

    def first_changed(self, progress: bool = False) -> InputError | None:
        """Every image hashed again (without decoding where the data set can): the error for the first
        whose content changed, or None."""
        from tqdm.auto import tqdm

        for i in tqdm(range(len(self.data)), disable=None if progress else True, desc="check the images",
                      unit="img", leave=False):
            err = changed_image(self.digests[i], digest_of(self.data, i), self.names[i])
            if err is not None:
                return err
        return None
