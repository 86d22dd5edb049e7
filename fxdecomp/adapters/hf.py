"""Hugging Face ``transformers`` vision models: their input size, and the output people use.

A ``transformers`` model returns a ``ModelOutput`` of several tensors. The one decomposed by
default is the representation people read off the model:

* ``image_embeds``: the projected embedding of a CLIP-style tower (``CLIPVisionModelWithProjection``,
  or ``get_image_features`` of a two-tower ``CLIPModel`` / ``SiglipModel``);
* ``logits``: an ``...ForImageClassification`` model's class scores;
* ``pooler``: ``pooler_output`` (DINOv2's normed class token, Swin's and ConvNeXt's pooled map,
  SigLIP's attention pool, BEiT's normed mean). Not where the pooler is BERT's ``tanh(dense(cls))``
  (ViT, DeiT): checkpoints of classifiers do not hold its weights (``transformers`` initialises it
  at random when loading them) and their classifiers read the class token instead, so that is the
  default there;
* ``cls``: the class token of ``last_hidden_state``;
* ``mean``: the mean of ``last_hidden_state`` over its patch tokens (class, distillation and
  register tokens left out; over the spatial axes of a feature map).

``output="last_hidden_state"`` decomposes every token (or the whole feature map).
"""
from __future__ import annotations

import inspect

import torch

from ..errors import InputError
from .selected import Selected

#: What ``decompose(hf_model, output=...)`` takes, in the order the default is chosen.
OUTPUTS = ("image_embeds", "logits", "pooler", "cls", "mean", "last_hidden_state")

#: Learned tokens put before the patch tokens (parameter names, last part).
_PREFIX_TOKENS = ("cls_token", "class_embedding", "distillation_token", "register_tokens")


def is_hf_model(model: torch.nn.Module) -> bool:
    """A ``transformers`` model (checked by class, without importing ``transformers``)."""
    return any(c.__module__.startswith("transformers.") and c.__name__ == "PreTrainedModel"
               for c in type(model).__mro__)


def vision_config(model: torch.nn.Module):
    """The config that describes the images (a two-tower model's ``vision_config``), or None."""
    cfg = getattr(model, "config", None)
    return getattr(cfg, "vision_config", None) or cfg


def input_size(model: torch.nn.Module) -> tuple[int, int, int] | None:
    """(C, H, W) from the model's config (``num_channels``, ``image_size``), or None."""
    cfg = vision_config(model)
    size = getattr(cfg, "image_size", None)
    if size is None:
        return None
    h, w = (size, size) if isinstance(size, int) else tuple(size)[-2:]
    return (int(getattr(cfg, "num_channels", 3) or 3), int(h), int(w))


def _two_tower(model: torch.nn.Module) -> bool:
    """CLIPModel, SiglipModel, ...: forward needs text; the image side is ``get_image_features``."""
    if not callable(getattr(model, "get_image_features", None)):
        return False
    params = inspect.signature(model.forward).parameters
    return "input_ids" in params


def _call(model, images):
    if _two_tower(model):
        return model.get_image_features(pixel_values=images)
    return model(pixel_values=images, return_dict=True)


def _prefix_tokens(model: torch.nn.Module) -> tuple[int, bool]:
    """(number of learned tokens before the patches, whether the first is a class token)."""
    n, cls = 0, False
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in _PREFIX_TOKENS:
            n += int(p.shape[-2]) if leaf == "register_tokens" and p.dim() >= 2 else 1
            cls = cls or leaf in ("cls_token", "class_embedding")
    return n, cls


def _tanh_pooler(model: torch.nn.Module) -> bool:
    """BERT's pooler, ``tanh(dense(hidden[:, 0]))``."""
    for name, mod in model.named_modules():
        if name.rsplit(".", 1)[-1] == "pooler" and isinstance(getattr(mod, "dense", None), torch.nn.Linear) \
                and isinstance(getattr(mod, "activation", None), torch.nn.Tanh):
            return True
    return False


def _tensor(out, key):
    v = out.get(key) if hasattr(out, "get") else None
    return v if isinstance(v, torch.Tensor) else None


def choices(model: torch.nn.Module, out) -> dict:
    """{output name: (pick(out) -> tensor, what it is)} for what ``out`` (the model's output) holds."""
    kind = type(model).__name__
    found: dict = {}
    if isinstance(out, torch.Tensor):  # an older get_image_features returns the embedding itself
        return {"image_embeds": (lambda o: o, "the image embedding (get_image_features)")}
    if _two_tower(model) and _tensor(out, "pooler_output") is not None:
        found["image_embeds"] = (lambda o: o.pooler_output, "the image embedding (get_image_features)")
    elif _tensor(out, "image_embeds") is not None:
        found["image_embeds"] = (lambda o: o.image_embeds, "image_embeds")
    if _tensor(out, "logits") is not None:
        found["logits"] = (lambda o: o.logits, "the class logits")
    if _tensor(out, "pooler_output") is not None and not _two_tower(model):
        found["pooler"] = (lambda o: o.pooler_output, "pooler_output")
    hidden = _tensor(out, "last_hidden_state")
    n_prefix, has_cls = _prefix_tokens(model)
    if _tensor(out, "cls_token_value") is not None:  # CvT keeps its class token apart from the map
        found["cls"] = (lambda o: o.cls_token_value[:, 0], "the class token (cls_token_value)")
    elif hidden is not None and hidden.dim() == 3 and has_cls:
        found["cls"] = (lambda o: o.last_hidden_state[:, 0], "the class token of last_hidden_state")
    if hidden is not None and hidden.dim() == 3 and hidden.shape[1] > n_prefix:
        k = n_prefix
        found["mean"] = (lambda o: o.last_hidden_state[:, k:].mean(1),
                         f"the mean of last_hidden_state over its {hidden.shape[1] - k} patch tokens"
                         + (f" ({k} learned tokens before them left out)" if k else ""))
    elif hidden is not None and hidden.dim() == 4:
        found["mean"] = (lambda o: o.last_hidden_state.mean((2, 3)),
                         "the mean of last_hidden_state over its spatial positions")
    if hidden is not None:
        found["last_hidden_state"] = (lambda o: o.last_hidden_state, "last_hidden_state (every position)")
    if not found:
        raise InputError(f"{kind}'s output has none of {OUTPUTS}; wrap it in a module whose forward(images) returns "
                         "the tensor to decompose")
    return found


def default_output(model: torch.nn.Module, found: dict) -> str:
    order = [o for o in OUTPUTS if o != "last_hidden_state"]
    if "pooler" in found and "cls" in found and _tanh_pooler(model):
        order.remove("pooler")
        order.append("pooler")
    return next(o for o in order if o in found)


def select_hf(model: torch.nn.Module, example: torch.Tensor, output: str | None) -> Selected:
    """``model`` as a module returning the chosen output (see the module docstring)."""
    kind = type(model).__name__
    if output is not None and output not in OUTPUTS:
        raise InputError(f"output must be one of {OUTPUTS} for a transformers model, got {output!r}")
    with torch.no_grad():  # one image: only what it returns is read (its keys, its shapes)
        out = _call(model, example[:1])
    found = choices(model, out)
    name = default_output(model, found) if output is None else output
    if name not in found:
        raise InputError(f"{kind} has no {name!r} output; it has {tuple(found)}")
    pick, what = found[name]
    how = "chosen" if output is not None else "the default"
    others = ", ".join(repr(o) for o in found if o != name)
    note = (f"{kind}: decomposed {what} (output={name!r}, {how}"
            + (f"; also available: {others}" if others else "") + ")")
    return Selected(model, _call, pick, name, note)
