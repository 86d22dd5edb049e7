"""Models by name: built-in presets, timm and open_clip architectures, local checkpoints.

``load("vit-small-random")`` builds a preset; ``load("timm:deit_base_patch16_224",
pretrained=True)`` asks timm for hub weights (needs network);
``load("timm:deit_base_patch16_224", checkpoint="deit.safetensors")`` loads a
local file instead; ``load("open_clip:ViT-B-16", checkpoint="clip.bin")``
returns the visual tower of an open_clip model; ``load("hf:PATH")`` loads a Hugging Face
model from a local folder written by ``save_pretrained`` (``config.json`` and the weights),
as the class its config names. Every loaded model is in eval mode.
"""
from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..errors import InputError


@dataclass(frozen=True)
class Preset:
    name: str
    build: Callable[[], torch.nn.Module]
    description: str


_PRESETS: dict[str, Preset] = {}
DEFAULT = "world-vit"


def register_preset(name: str, build: Callable[[], torch.nn.Module], description: str) -> None:
    _PRESETS[name] = Preset(name, build, description)


def presets() -> list[Preset]:
    return list(_PRESETS.values())


def _random_vit() -> torch.nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(img_size=64, patch_size=8, embed_dim=192, depth=6, num_heads=3, num_classes=0)


register_preset("vit-small-random", _random_vit,
                "ViT with random weights (64x64 images, patch 8, width 192, 6 blocks, 3 heads); not trained")


def _world(name: str):
    def build():
        from ..world import shipped

        return shipped.load(name)

    return build


def _register_world() -> None:
    from ..world.shipped import DESCRIPTIONS

    for name, text in DESCRIPTIONS.items():
        register_preset(name, _world(name), f"shipped, trained on the synthetic world: {text}")


_register_world()


def load(name: str = DEFAULT, *, pretrained: bool = False, checkpoint: str | Path | None = None,
         **kwargs) -> torch.nn.Module:
    """Build a model by name (see module docstring) and put it in eval mode."""
    if name in _PRESETS:
        if pretrained:
            raise InputError(f"preset {name!r} has no pretrained weights; pass checkpoint=... to load a file")
        model = _PRESETS[name].build()
        if checkpoint is not None:
            _load_file(model, checkpoint)
        return model.eval()
    lib, _, arch = name.partition(":")
    if not arch:
        import timm

        if not timm.is_model(name.split(".")[0]):
            raise InputError(f"unknown model {name!r}: use a preset ({', '.join(_PRESETS)}), 'timm:<arch>', "
                             "'open_clip:<arch>[:<pretrained tag>]' or 'hf:<folder>'")
        lib, arch = "timm", name
    if lib == "timm":
        return _timm(arch, pretrained, checkpoint, **kwargs)
    if lib == "open_clip":
        return _open_clip(arch, pretrained, checkpoint, **kwargs)
    if lib == "hf":
        return _hf(arch, pretrained, checkpoint, **kwargs)
    raise InputError(f"unknown model {name!r}: use a preset ({', '.join(_PRESETS)}), 'timm:<arch>', "
                     "'open_clip:<arch>[:<pretrained tag>]' or 'hf:<folder>'")


def _timm(arch: str, pretrained: bool, checkpoint, **kwargs) -> torch.nn.Module:
    import timm

    if not timm.is_model(arch.split(".")[0]):
        close = timm.list_models(f"*{arch.split('.')[0][:12]}*")[:5]
        raise InputError(f"timm has no model {arch!r}" + (f"; close: {close}" if close else ""))
    kwargs.setdefault("num_classes", 0)
    model = timm.create_model(arch, pretrained=pretrained and checkpoint is None, **kwargs)
    if checkpoint is not None:
        _load_file(model, checkpoint)
    return model.eval()


def _open_clip(arch: str, pretrained: bool, checkpoint, **kwargs) -> torch.nn.Module:
    import open_clip

    arch, _, tag = arch.partition(":")
    source = str(checkpoint) if checkpoint is not None else (tag or None) if pretrained or tag else None
    if pretrained and source is None:
        raise InputError("open_clip models need a pretrained tag ('open_clip:ViT-B-16:laion2b_s34b_b88k') "
                         "or checkpoint=...")
    if checkpoint is not None:
        _check_file(Path(checkpoint))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No pretrained weights loaded")
        try:
            model = open_clip.create_model(arch, pretrained=source, **kwargs)
        except Exception as err:  # noqa: BLE001 - open_clip raises many kinds for a bad file or tag
            what = f"checkpoint {checkpoint}" if checkpoint is not None else f"pretrained tag {tag!r}"
            raise InputError(f"open_clip cannot load {arch} with {what} ({type(err).__name__}: {str(err)[:200]}); "
                             "give a weights file (or tag) of that architecture") from None
    return model.visual.eval()


def _hf(path: str, pretrained: bool, checkpoint, **kwargs) -> torch.nn.Module:
    """The model saved in ``path``, built as the class its ``config.json`` names (``architectures``;
    ``AutoModel`` when it names none that ``transformers`` has), with every weight from the folder."""
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise InputError(f"hf:{path}: {folder} has no config.json; hf:PATH takes a folder written by "
                         "save_pretrained (config.json and model.safetensors)")
    if checkpoint is not None or pretrained:
        raise InputError(f"hf:{path} loads the weights in that folder; drop --checkpoint/--pretrained")
    try:
        import transformers
    except ImportError:
        raise InputError('hf:PATH needs the transformers package: pip install -e ".[hf]"') from None
    config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    names = [a for a in (getattr(config, "architectures", None) or []) if hasattr(transformers, a)]
    cls = getattr(transformers, names[0]) if names else transformers.AutoModel
    bars = transformers.utils.logging
    quiet = not sys.stderr.isatty() and bars.is_progress_bar_enabled()  # its bars, like ours, only on a terminal
    if quiet:
        bars.disable_progress_bar()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model, info = cls.from_pretrained(folder, local_files_only=True, output_loading_info=True, **kwargs)
        except (OSError, ValueError) as err:
            raise InputError(f"hf:{path}: transformers cannot load {folder}: {str(err).splitlines()[0][:300]}") \
                from None
        finally:
            if quiet:
                bars.enable_progress_bar()
    if info.get("missing_keys"):
        missing = sorted(info["missing_keys"])
        raise InputError(f"hf:{path}: the folder's weights lack {len(missing)} of {cls.__name__}'s "
                         f"({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}); they would be random")
    return model.eval()


def _load_file(model: torch.nn.Module, path) -> None:
    from timm.models import load_checkpoint

    path = Path(path)
    _check_file(path)
    try:
        load_checkpoint(model, str(path), strict=True)
    except RuntimeError as err:
        if "Error(s) in loading state_dict" in str(err) or "size mismatch" in str(err):
            raise InputError(f"checkpoint {path} does not fit {type(model).__name__}: {str(err)[:400]}") from None
        raise InputError(f"checkpoint {path} cannot be read as weights ({type(err).__name__}: {str(err)[:200]}); "
                         "give a .safetensors, .pth or .bin file of the model's state dict") from None
    except Exception as err:  # noqa: BLE001 - a junk file: unpickling, safetensors and zip errors
        raise InputError(f"checkpoint {path} cannot be read as weights ({type(err).__name__}: {str(err)[:200]}); "
                         "give a .safetensors, .pth or .bin file of the model's state dict") from None


def _check_file(path: Path) -> None:
    if path.is_dir():
        raise InputError(f"checkpoint {path} is a folder, not a weights file")
    if not path.is_file():
        raise InputError(f"checkpoint {path} does not exist")
