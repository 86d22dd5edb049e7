"""The small models of the synthetic world, built from the libraries' own classes
(timm's VisionTransformer and SwinTransformer, open_clip's CLIP) so that
everything downstream runs the code paths real checkpoints use."""
from __future__ import annotations

import torch

from .attributes import CATEGORICAL
from .captions import WordTokenizer

IMAGE_SIZE = 64
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)
#: Multi-attribute classifiers have one logit per attribute value, attribute after attribute.
HEAD_SLICES = {}
_start = 0
for _name, _values in CATEGORICAL.items():
    HEAD_SLICES[_name] = slice(_start, _start + len(_values))
    _start += len(_values)
N_ATTRIBUTE_LOGITS = _start


def _config(model: torch.nn.Module, name: str) -> torch.nn.Module:
    # trained on the renders as they are: no resize margin (crop_pct 1), so 64-pixel images pass unchanged
    model.pretrained_cfg = dict(getattr(model, "pretrained_cfg", None) or {}, input_size=(3, IMAGE_SIZE, IMAGE_SIZE),
                                mean=MEAN, std=STD, crop_pct=1.0, interpolation="bicubic", architecture=name)
    return model


def vit(num_classes: int = N_ATTRIBUTE_LOGITS, *, width: int = 128, depth: int = 6, heads: int = 4,
        name: str = "world-vit") -> torch.nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    return _config(VisionTransformer(img_size=IMAGE_SIZE, patch_size=8, embed_dim=width, depth=depth,
                                     num_heads=heads, num_classes=num_classes), name)


def swin(num_classes: int = N_ATTRIBUTE_LOGITS) -> torch.nn.Module:
    from timm.models.swin_transformer import SwinTransformer

    return _config(SwinTransformer(img_size=IMAGE_SIZE, patch_size=4, window_size=4, embed_dim=48,
                                   depths=(2, 2, 2), num_heads=(2, 4, 8), num_classes=num_classes), "world-swin")


def tokenizer() -> WordTokenizer:
    return WordTokenizer()


def clip() -> torch.nn.Module:
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    tok = tokenizer()
    model = CLIP(
        embed_dim=64,
        vision_cfg=CLIPVisionCfg(image_size=IMAGE_SIZE, patch_size=8, width=128, layers=6, head_width=32),
        text_cfg=CLIPTextCfg(context_length=tok.context_length, vocab_size=tok.vocab_size, width=128, heads=4,
                             layers=4),
    )
    model.visual.image_mean, model.visual.image_std = MEAN, STD
    return model


#: world-clip-l's shape; saved in its record so that a file trained at another size loads too.
CLIP_L = {"embed_dim": 256, "width": 256, "layers": 8, "text_width": 256, "text_layers": 6, "heads": 8}


def clip_l(**config) -> torch.nn.Module:
    """The world's strong CLIP, the stand-in for the paper's ViT-L/14 target: a joint space at
    least as wide as the widest world model (192) and a twice-as-wide image tower of square
    8x8 patch maps. ``config`` overrides entries of ``CLIP_L`` (tests train narrow copies);
    the model keeps its config as ``world_config`` for the training record."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    unknown = set(config) - set(CLIP_L)
    if unknown:
        raise TypeError(f"clip_l() takes {', '.join(CLIP_L)}; not {', '.join(sorted(unknown))}")
    cfg = {**CLIP_L, **config}
    tok = tokenizer()
    model = CLIP(
        embed_dim=cfg["embed_dim"],
        vision_cfg=CLIPVisionCfg(image_size=IMAGE_SIZE, patch_size=8, width=cfg["width"], layers=cfg["layers"],
                                 head_width=cfg["width"] // cfg["heads"]),
        text_cfg=CLIPTextCfg(context_length=tok.context_length, vocab_size=tok.vocab_size,
                             width=cfg["text_width"], heads=cfg["heads"], layers=cfg["text_layers"]),
    )
    model.visual.image_mean, model.visual.image_std = MEAN, STD
    model.world_config = cfg
    return model


def split_logits(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-attribute logits of a multi-attribute classifier."""
    return {k: logits[:, s] for k, s in HEAD_SLICES.items()}
