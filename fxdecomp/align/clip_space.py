"""The target space of the alignment: a CLIP-like pair of image and text towers.

``ClipSpace`` hides what differs between CLIP implementations (tokenizer,
preprocessing, prompt templates) behind three things the rest of
``fxdecomp.align`` needs: image embeddings, text embeddings and their width.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..preprocessing import transform_for
from .images import as_batch

Template = str | Callable[[str], str]


def world_templates() -> tuple[str, ...]:
    """The world CLIP's zero-shot phrasings (its captions' own words), each used once."""
    from ..world.captions import ATTRIBUTE_PROMPTS

    return tuple(dict.fromkeys(ATTRIBUTE_PROMPTS.values()))


def open_clip_templates() -> tuple[Template, ...]:
    """The 80 ImageNet prompt templates that open_clip ships."""
    try:
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
    except ImportError:  # older layouts
        from open_clip import OPENAI_IMAGENET_TEMPLATES  # type: ignore[no-redef]
    return tuple(OPENAI_IMAGENET_TEMPLATES)


class ClipSpace:
    """Image and text towers sharing one embedding space.

    Args:
        model: has ``encode_image(x)`` and ``encode_text(tokens)`` (open_clip's CLIP does)
            and an image tower as ``model.visual``.
        tokenizer: texts -> token ids for ``encode_text``.
        preprocess: raw [B, 3, H, W] batch (uint8 or float [0, 1]) -> image-tower input; an
            ``EvalTransform`` (``transform_for(model.visual)``, as the constructors make) also lets
            a run's loader resize and crop in its workers.
        templates: prompt templates (``"a photo of a {}."`` or callables) that every
            description is put through before its embeddings are averaged.
        name: recorded in saved aligners, so an aligner is not used with another CLIP.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Callable, preprocess: Callable,
                 templates: Sequence[Template] = ("{}",), name: str = "clip", spec: str | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.templates = tuple(templates)
        self.name = name
        #: What ``ClipSpace.by_name`` takes to build this space again (with the same checkpoint, if any).
        self.spec = spec or name
        self._dim: int | None = None

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_open_clip(cls, name: str, pretrained: str | None = None, checkpoint: str | Path | None = None,
                       device: str | torch.device = "cpu", random_weights: bool = False) -> ClipSpace:
        """An open_clip model by architecture name, with a pretrained tag (downloads) or a local
        ``checkpoint`` file. Neither is refused: a CLIP of random weights gives meaningless
        descriptions, so it takes ``random_weights=True`` (for tests)."""
        import open_clip

        _check_open_clip(name, pretrained, checkpoint, random_weights)
        source = str(checkpoint) if checkpoint is not None else pretrained
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="No pretrained weights loaded")
            try:
                model = open_clip.create_model(name, pretrained=source, device=device)
            except Exception as err:  # noqa: BLE001 - open_clip raises many kinds for a bad file or tag
                if checkpoint is not None:
                    raise InputError(f"checkpoint {checkpoint} cannot be loaded into open_clip's {name} "
                                     f"({type(err).__name__}: {str(err)[:200]}): give the weights file of that "
                                     "architecture") from None
                raise InputError(f"open_clip cannot load {name} with pretrained tag {pretrained!r} "
                                 f"({type(err).__name__}: {str(err)[:200]}); tags of {name}: {_tags(name)}") \
                    from None
        pre = transform_for(model.visual)  # open_clip's own eval transform, from the tower's preprocess_cfg
        spec = f"open_clip:{name}" + (f":{pretrained}" if pretrained and checkpoint is None else "")
        tag = spec + (f":{Path(checkpoint).name}" if checkpoint is not None else "")
        return cls(model, open_clip.get_tokenizer(name), pre, open_clip_templates(), tag, spec)

    @classmethod
    def world(cls, name: str = "world-clip", path: str | Path | None = None) -> ClipSpace:
        """A CLIP of the synthetic world (offline): ``world-clip`` (64 wide, shipped) or
        ``world-clip-l`` (256 wide, the strong target space). The default stays ``world-clip``
        until world-clip-l's trained file ships; until then ``path`` loads a trained file."""
        from ..world.shipped import load_clip

        model, tokenizer = load_clip(name, path=path)
        pre = transform_for(model.visual)  # the world's 64-pixel renders pass unchanged
        tag = name if path is None else f"{name}:{Path(path).name}"
        return cls(model, tokenizer, pre, world_templates(), tag, name)

    @classmethod
    def by_name(cls, spec: str, checkpoint: str | Path | None = None, device: str | torch.device = "cpu") -> ClipSpace:
        """``world-clip`` (shipped), ``world-clip-l`` (``checkpoint``: its trained file, until it ships), or
        ``open_clip:NAME[:TAG]`` (a pretrained tag downloads; ``checkpoint`` loads a local file instead)."""
        check_spec(spec, checkpoint)
        if spec in ("world-clip", "world-clip-l"):
            return cls.world(spec, path=checkpoint).to(device)
        name, _, tag = spec.partition(":")[2].partition(":")
        return cls.from_open_clip(name, pretrained=tag or None, checkpoint=checkpoint, device=device)

    # -- properties ------------------------------------------------------------------------------
    @property
    def visual(self) -> torch.nn.Module:
        """The image tower (what ``fxdecomp.decompose`` would take apart)."""
        return self.model.visual

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dim(self) -> int:
        """Width of the joint embedding space."""
        if self._dim is None:
            out = getattr(self.model.visual, "output_dim", None)
            if not isinstance(out, int):
                out = int(self.encode_texts(["x"], templates=("{}",)).shape[1])
            self._dim = out
        return self._dim

    def to(self, device) -> ClipSpace:
        self.model.to(device)
        return self

    def __repr__(self) -> str:
        return f"ClipSpace({self.name!r}, {len(self.templates)} templates)"

    # -- encoding --------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_images(self, images, *, preprocessed: bool = False, batch_size: int = 256,
                      normalize: bool = True) -> torch.Tensor:
        """[N, dim] float32 CPU embeddings of raw images (or of ``preprocessed`` tower inputs)."""
        x = images if preprocessed else as_batch(images)
        outs = []
        for start in range(0, len(x), batch_size):
            batch = x[start:start + batch_size]
            batch = (batch if preprocessed else self.preprocess(batch)).to(self.device)  # resized on the host
            outs.append(self.embed_preprocessed(batch, normalize=normalize).cpu())
        return torch.cat(outs) if outs else torch.zeros(0, self.dim)

    def embed_preprocessed(self, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        dtype = next(self.model.parameters()).dtype
        emb = self.model.encode_image(x.to(self.device, dtype)).float()
        return F.normalize(emb, dim=-1) if normalize else emb

    @torch.no_grad()
    def encode_texts(self, descriptions: Sequence[str], templates: Sequence[Template] | None = None,
                     batch_size: int = 256) -> torch.Tensor:
        """[k, dim] float32 CPU: each description through every template, each embedding
        normalised, averaged over templates, normalised again."""
        if isinstance(descriptions, str):
            descriptions = [descriptions]
        templates = self.templates if templates is None else tuple(templates)
        empty = [d for d in descriptions if not isinstance(d, str) or not d.strip()]
        if empty:
            raise InputError(f"descriptions must be non-empty texts, got {empty[0]!r}: an empty description reads "
                             "nothing but the prompt template")
        if not templates:
            raise InputError("encode_texts needs at least one template (use ('{}',) for the raw text)")
        texts = [_fill(t, d) for d in descriptions for t in templates]
        embs = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(texts[start:start + batch_size]).to(self.device)
            embs.append(F.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu())
        emb = torch.cat(embs).view(len(descriptions), len(templates), -1).mean(1)
        return F.normalize(emb, dim=-1)


def check_spec(spec: str, checkpoint: str | Path | None = None) -> None:
    """What ``ClipSpace.by_name`` checks before loading anything: a known CLIP, and weights for it."""
    if spec in ("world-clip", "world-clip-l"):
        if spec == "world-clip" and checkpoint is not None:
            raise InputError("world-clip is shipped with the package; it takes no --clip-checkpoint")
        if checkpoint is not None and not Path(checkpoint).is_file():
            raise InputError(f"checkpoint {checkpoint} is not a file")
        return
    lib, _, rest = spec.partition(":")
    if lib != "open_clip" or not rest:
        raise InputError(f"unknown CLIP {spec!r}: use world-clip, world-clip-l or open_clip:NAME[:TAG] "
                         "(e.g. open_clip:ViT-L-14:laion2b_s32b_b82k, or open_clip:ViT-B-16 --clip-checkpoint FILE)")
    name, _, tag = rest.partition(":")
    _check_open_clip(name, tag or None, checkpoint)


def _check_open_clip(name: str, tag: str | None, checkpoint, random_weights: bool = False) -> None:
    import open_clip

    if name not in open_clip.list_models():
        raise InputError(f"open_clip has no model {name!r}; see open_clip.list_models()")
    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            what = "is a folder, not a weights file" if Path(checkpoint).is_dir() else "does not exist"
            raise InputError(f"checkpoint {checkpoint} {what}")
    elif not tag and not random_weights:
        raise InputError(f"open_clip:{name} names no weights, and a CLIP of random weights would describe nothing: "
                         f"add a pretrained tag (open_clip:{name}:TAG, e.g. one of {_tags(name)}) or give a local "
                         "weights file with --clip-checkpoint FILE")


def _tags(name: str) -> str:
    """Some pretrained tags open_clip knows for ``name``."""
    import open_clip

    try:
        tags = open_clip.list_pretrained_tags_by_model(name)
    except Exception:  # noqa: BLE001 - older open_clip layouts
        tags = []
    return ", ".join(tags[:4]) if tags else "none known"


def _fill(template: Template, text: str) -> str:
    return template(text) if callable(template) else template.format(text)
