"""Input size and eval preprocessing of a model, read from the conventions of the libraries that
build them: timm's ``pretrained_cfg`` (through ``resolve_model_data_config``), an open_clip tower's
``preprocess_cfg`` / ``image_size``, a Hugging Face model's config and image processor, or a
model's or its patch embedding's ``img_size``."""
from __future__ import annotations

from pathlib import Path

import torch

from .. import adapters
from ..adapters.expected_size import input_size_of
from ..errors import InputError
from .eval_transform import EvalTransform

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalization_of(model: torch.nn.Module) -> tuple[tuple, tuple]:
    """(mean, std) of the model's eval preprocessing."""
    t = transform_for(model)
    return tuple(t.mean), tuple(t.std)


def transform_for(model: torch.nn.Module) -> EvalTransform:
    """The model's eval preprocessing as its library does it (``fxdecomp.preprocessing``).

    Callable on raw images (PIL images, uint8 or float [0, 1] tensors [B, C, h, w] or arrays
    [N, h, w, C], any size), returning the normalised input batch; ``describe()`` says what it does
    and where its config came from. In order: a Hugging Face model's image processor (found with
    ``AutoImageProcessor`` from its ``name_or_path``, on the PIL backend); an open_clip tower's
    ``preprocess_cfg``; a timm model's ``pretrained_cfg`` (``crop_pct``, ``interpolation``, ...);
    otherwise defaults, recorded as such: the model's input size, its ``image_mean``/``image_std``
    or ImageNet's, short side resized (bicubic) to the input size and the centre cropped.
    """
    model = adapters.unwrap(model)
    size = input_size_of(model)
    if adapters.is_hf_model(model):
        found = _transformers(model, size)
        if found is not None:
            return found
    elif type(model).__module__.startswith("open_clip"):
        return _open_clip(model, size)
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and cfg:
        return _timm(model, size)
    return _defaults(model, size)


def _timm(model, size) -> EvalTransform:
    from timm.data import resolve_model_data_config

    config = resolve_model_data_config(model, args={"input_size": size})
    said = tuple(model.pretrained_cfg.get("input_size") or ())
    read = "timm's resolve_model_data_config (the model's pretrained_cfg)"
    if said and said != tuple(size):
        read += f", with the model's input size {list(size)} for the config's {list(said)}"
    return EvalTransform("timm", dict(config), read, tuple(size), tuple(config["mean"]), tuple(config["std"]))


def _open_clip(visual, size) -> EvalTransform:
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    cfg = dict(getattr(visual, "preprocess_cfg", None) or {})
    mean = tuple(cfg.get("mean") or getattr(visual, "image_mean", None) or OPENAI_DATASET_MEAN)
    std = tuple(cfg.get("std") or getattr(visual, "image_std", None) or OPENAI_DATASET_STD)
    h, w = size[1:]
    config = {"image_size": h if h == w else [h, w], "mean": list(mean), "std": list(std),
              "interpolation": cfg.get("interpolation", "bicubic"), "resize_mode": cfg.get("resize_mode", "shortest"),
              "fill_color": cfg.get("fill_color", 0)}
    read = "the tower's preprocess_cfg" if cfg else "the tower's image_size, image_mean and image_std (open_clip's defaults)"
    return EvalTransform("open_clip", config, f"open_clip: {read}", tuple(size), mean, std)


def _transformers(model, size) -> EvalTransform | None:
    """From the model's image processor config, if one is found where the model was loaded from."""
    source = getattr(model, "name_or_path", "") or ""
    if not source:
        return None
    try:
        from transformers import AutoImageProcessor

        proc = AutoImageProcessor.from_pretrained(source, local_files_only=True, backend="pil")
    except (ImportError, OSError, ValueError):
        return None
    config = proc.to_dict()
    config.pop("_processor_class", None)
    mean = tuple(proc.image_mean) if proc.do_normalize else (0.0,) * size[0]
    std = tuple(proc.image_std) if proc.do_normalize else (1.0,) * size[0]
    rescale = float(proc.rescale_factor) if proc.do_rescale else 1.0
    where = Path(source) / "preprocessor_config.json" if Path(source).is_dir() else source
    return EvalTransform("transformers", config, f"transformers: {type(proc).__name__} from {where}", tuple(size),
                         mean, std, rescale)


def _defaults(model, size) -> EvalTransform:
    mean = getattr(model, "image_mean", None)
    std = getattr(model, "image_std", None)
    mean, std = (tuple(mean), tuple(std)) if mean is not None and std is not None else (IMAGENET_MEAN, IMAGENET_STD)
    config = {"input_size": tuple(size), "interpolation": "bicubic", "crop_pct": 1.0, "crop_mode": "center",
              "mean": mean, "std": std}
    read = ("defaults, the model names no preprocessing: its input size, "
            + ("its image_mean/image_std" if getattr(model, "image_mean", None) is not None else "ImageNet mean and std")
            + ", short side resized (bicubic) and the centre cropped, no margin")
    return EvalTransform("timm", config, read, tuple(size), mean, std)
