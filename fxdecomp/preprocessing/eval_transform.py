"""A model's eval preprocessing, as its library does it, split where images stop being uint8.

``resize_crop`` is the library's own resize and crop, run on each decoded image (a PIL image,
where the data is read: in the data loader's workers); ``normalize`` is its to-float and
``(x - mean) / std`` on the batch (where the model runs). Together they equal the library's
eval transform exactly. ``describe()`` is what a run records, and ``from_description`` builds the
same transform again from it (to show a run's images as the model saw them).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from PIL import Image

from ..errors import InputError
from .libraries import geometry

#: How the two halves are applied, as a run records it.
APPLIED = ("once per image: the library's resize and crop on the decoded image (PIL), where the data is read; "
           "then to float and (x - mean) / std on the batch")


@dataclass
class EvalTransform:
    """Raw images (PIL, uint8 or float [0, 1] tensors / arrays, any size) -> the model's input batch.

    Attributes:
        library: whose transform it is (``timm``, ``open_clip``, ``transformers``).
        config: the library's own config, from which the library builds the transform.
        read_from: where that config came from (the model's ``pretrained_cfg``, ``preprocess_cfg``,
            a ``preprocessor_config.json``, or defaults where the model has none).
        input_size: (C, H, W) of what it makes.
        mean, std: the normalisation.
        rescale: ``transformers``' ``rescale_factor`` (multiplied in float64, as it does); None for
            to-tensor's division by 255 in float32.
    """

    library: str
    config: dict
    read_from: str
    input_size: tuple
    mean: tuple
    std: tuple
    rescale: float | None = None

    @cached_property
    def geometry(self):
        return geometry(self.library, self.config)

    # -- the two halves ------------------------------------------------------------------------------
    def resize_crop(self, image) -> torch.Tensor:
        """[C, H, W] at the model's input size: uint8 from a PIL image or a uint8 tensor / array (the
        library's transform on the PIL image), float from a float [0, 1] one (its transform on the
        tensor). A float image whose values are all multiples of 1/255 is the 8-bit image it was
        made from, and goes the 8-bit way, so the same pixels give the same input in either form."""
        img = _one_image(image, self.input_size[0])
        out = self.geometry(img)
        if isinstance(out, Image.Image):
            arr = np.array(out, copy=True)
            out = torch.from_numpy(arr[..., None] if arr.ndim == 2 else arr).permute(2, 0, 1).contiguous()
        if tuple(out.shape) != tuple(self.input_size):
            raise InputError(f"the {self.library} preprocessing made an image of shape {list(out.shape)}, not the "
                             f"model's input {list(self.input_size)}; its config ({self.read_from}) does not fit the model")
        return out

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """float32 model input from a batch of ``resize_crop`` outputs [B, C, H, W] (uint8, or float in [0, 1])."""
        x = batch
        if x.dtype == torch.uint8:
            x = (x.double() * self.rescale).float() if self.rescale is not None else x.float().div(255)
        else:
            x = x.float()
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return x.sub(mean).div(std)

    def __call__(self, images) -> torch.Tensor:
        """The model's input batch (float32, on the device the images were on)."""
        items, device = _images(images)
        return self.normalize(torch.stack([self.resize_crop(im) for im in items])).to(device)

    def mask(self, mask) -> torch.Tensor:
        """A [H, W] boolean mask through the same resize and crop (thresholded at one half)."""
        m = np.asarray(mask, dtype=bool).astype(np.uint8) * 255
        out = self.resize_crop(Image.fromarray(np.repeat(m[..., None], 3, axis=2)))
        return out[0] > 127

    # -- what a run records --------------------------------------------------------------------------
    def describe(self) -> dict:
        steps = self.geometry.transforms if hasattr(self.geometry, "transforms") else [self.geometry]
        d = {"library": self.library, "read_from": self.read_from, "config": self.config,
             "input_size": list(self.input_size), "mean": list(self.mean), "std": list(self.std),
             "rescale": self.rescale, "steps": [repr(s) for s in steps], "applied": APPLIED}
        return json.loads(json.dumps(d, default=_json))

    @classmethod
    def from_description(cls, d: dict) -> EvalTransform:
        if d.get("library") is None:
            raise InputError("this run was written before runs recorded their preprocessing library; decompose it "
                             "again to show its images as the model saw them")
        return cls(d["library"], d["config"], d["read_from"], tuple(d["input_size"]), tuple(d["mean"]),
                   tuple(d["std"]), d.get("rescale"))


def _json(v):
    if isinstance(v, (np.integer, np.floating)):
        return v.item()
    if hasattr(v, "value"):  # enums (PIL resampling filters)
        return v.value
    return str(v)


def _one_image(image, channels: int):
    if isinstance(image, Image.Image):
        return image.convert("RGB") if channels == 3 and image.mode != "RGB" else image
    t = torch.as_tensor(np.ascontiguousarray(image)) if isinstance(image, np.ndarray) else image
    if not isinstance(t, torch.Tensor):
        raise InputError(f"expected an image (PIL, tensor or array), got {type(image).__name__}")
    if t.dim() == 3 and t.shape[0] not in (1, 3) and t.shape[-1] in (1, 3):
        t = t.permute(2, 0, 1)
    if t.dim() != 3 or t.shape[0] != channels:
        raise InputError(f"expected an image [{channels}, H, W] (or [H, W, {channels}]), got shape {list(t.shape)}")
    t = t.detach().cpu()
    if t.dtype == torch.uint8:
        hwc = t.permute(1, 2, 0).numpy()
        return Image.fromarray(hwc[..., 0] if channels == 1 else hwc)
    if not t.is_floating_point():
        raise InputError(f"images must be uint8 or float in [0, 1], got {t.dtype}")
    t = t.float()
    q = (t * 255).round()
    if bool(((q >= 0) & (q <= 255)).all()) and torch.equal(q / 255, t):  # an 8-bit image, scaled: the 8-bit way
        return _one_image(q.to(torch.uint8), channels)
    return t


def _images(images) -> tuple[list, torch.device]:
    """A list of single images and the device the result goes to."""
    if isinstance(images, Image.Image):
        return [images], torch.device("cpu")
    if isinstance(images, (list, tuple)):
        if not images:
            raise InputError("got an empty list of images")
        dev = images[0].device if isinstance(images[0], torch.Tensor) else torch.device("cpu")
        return list(images), dev
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise InputError(f"expected images as PIL images, a numpy array or a torch tensor, got {type(images).__name__}")
    if images.dim() == 3:
        return [images], images.device
    if images.dim() != 4:
        raise InputError(f"expected images [N, C, H, W] or [N, H, W, C], got shape {list(images.shape)}")
    return list(images), images.device
