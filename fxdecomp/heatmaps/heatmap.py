"""Token heatmaps: where in the image a component, a text or any direction gets its value.

``token_maps`` computes maps for a whole batch (segmentation thresholds them);
``heatmap`` draws one image's map over the image and returns the array with
the figure.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from ..figure import pyplot
from .layout import token_layout
from .maps import pixel_maps
from .values import along_direction, members, norms, shares


def _unpack(data):
    contributions = getattr(data, "contributions", None)
    components = getattr(data, "components", None)
    if contributions is None or components is None:
        raise InputError(f"expected a Decomposition (or anything with .contributions and .components), got "
                         f"{type(data).__name__}")
    if contributions.dim() != 3:
        raise InputError(f"token maps need one vector per image and component, got contributions "
                         f"{list(contributions.shape)}")
    return contributions, list(components)


def text_direction(text, clip, width: int) -> torch.Tensor:
    """[width] unit text embedding of ``text`` (a string, or several averaged) in ``clip``'s space."""
    if clip is None:
        raise InputError("a text direction needs clip=ClipSpace(...) to embed the text")
    texts = [text] if isinstance(text, str) else list(text)
    t = clip.encode_texts(texts).double().mean(0)
    if t.shape[0] != width:
        raise InputError(f"the text lives in a {t.shape[0]}-d CLIP space but the contributions are {width}-d: pass "
                         "aligner=CompAlign (trained for this model and CLIP) to map them into CLIP space")
    return torch.nn.functional.normalize(t, dim=0)


def token_maps(data, size, *, component=None, text=None, direction=None, clip=None, aligner=None,
               mode: str = "bilinear") -> torch.Tensor:
    """[B, H, W] token maps of a token-granularity decomposition on images of ``size`` (H, W).

    What each token contributes, read as one number (see ``heatmaps.values``):

    * ``text``: along the text's CLIP embedding; contributions are first mapped into CLIP space
      by ``aligner`` (each token by its head's map), unless the model's output already is CLIP's
      embedding (an open_clip image tower);
    * ``direction``: along a vector of the output space ([D], or [B, D] one per image: e.g. the
      one-hot of each image's class, for a classifier's logits);
    * neither, with ``component``: each token's share of the tokens' summed contribution;
    * nothing: the size of every token's contribution.

    ``component`` (names of tokens, heads or branches, or a predicate) restricts the map to the
    tokens of those components. The map is a density: each token's value spread over its cell.
    """
    contributions, components = _unpack(data)
    return _maps(contributions, components, size, component, text, direction, clip, aligner, mode)


def _maps(contributions, components, size, component, text, direction, clip, aligner, mode) -> torch.Tensor:
    chosen = members(components, component) if component is not None else None
    layout = token_layout(components, chosen)
    c = contributions[:, layout.index].double()
    if text is not None or (direction is not None and aligner is not None):
        if aligner is not None:
            c = aligner.map_finer(c, [components[int(i)] for i in layout.index]).double()
        along = text_direction(text, clip, c.shape[2]) if text is not None else direction
        values = along_direction(c, along)
    elif direction is not None:
        values = along_direction(c, direction)
    elif component is not None:
        values = shares(c, [range(len(layout))])
    else:
        values = norms(c)
    return pixel_maps(values, layout, size, mode)


@dataclass
class Heatmap:
    """``array`` [H, W] (float64) on the image's pixels and the ``figure`` it is drawn in."""

    array: np.ndarray
    figure: object
    title: str


def heatmap(data, image=None, *, index: int = 0, component=None, text=None, direction=None, clip=None,
            aligner=None, size=None, mode: str = "bilinear", ax=None, title: str | None = None) -> Heatmap:
    """Draw image ``index``'s token map over the image (matplotlib) and return it.

    ``data``: a token-granularity ``Decomposition`` of a batch; ``image``: that image as the model saw
    it (uint8 [H, W, 3] or a [3, H, W] tensor; any resolution, the map is stretched to it), or
    ``None`` with ``size=(H, W)`` for the map alone. ``component``/``text``/``direction``/``clip``/
    ``aligner``: what to show, as in :func:`token_maps`. Red is positive, blue negative.
    """
    contributions, components = _unpack(data)
    if not -len(contributions) <= index < len(contributions):
        raise InputError(f"image index {index} out of range: the decomposition holds {len(contributions)} images")
    picture = _picture(image) if image is not None else None
    if picture is None and size is None:
        raise InputError("pass the image to draw on, or size=(H, W) for the map alone")
    hw = picture.shape[:2] if picture is not None else tuple(size)
    if direction is not None:
        d = torch.as_tensor(direction)
        direction = d[index] if d.dim() == 2 else d
    array = _maps(contributions[index:index + 1], components, hw, component, text, direction, clip, aligner,
                  mode)[0].cpu().numpy()
    title = title or _title(component, text, direction)
    fig = draw(array, picture, ax=ax, title=title, signed=bool(text is not None or direction is not None
                                                               or component is not None))
    return Heatmap(array, fig, title)


def _title(component, text, direction) -> str:
    what = f"'{text}'" if isinstance(text, str) else (", ".join(text) if text is not None else
                                                      "direction" if direction is not None else None)
    where = component if isinstance(component, str) else ("chosen components" if component is not None else
                                                            "all tokens")
    return f"{what} from {where}" if what else (f"{where}: token shares" if component is not None
                                                 else "token contribution size")


def _picture(image) -> np.ndarray:
    """uint8 or float image as [H, W, 3] floats in [0, 1]."""
    a = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 3:
        raise InputError(f"expected one image [H, W, 3] or [3, H, W], got shape {list(a.shape)}")
    if a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.moveaxis(a, 0, -1)
    a = a.astype(np.float64)
    return a / 255.0 if a.max() > 1.0 + 1e-6 else a


def draw(array: np.ndarray, picture: np.ndarray | None = None, *, ax=None, title: str = "", signed: bool = True):
    """Overlay ``array`` on ``picture`` in ``ax`` (a new figure when None); returns the figure."""
    if ax is None:
        fig, ax = pyplot().subplots(figsize=(3.2, 3.2))
    else:
        fig = ax.figure
    if picture is not None:
        ax.imshow(picture.clip(0, 1), interpolation="nearest")
    lim = float(np.abs(array).max()) or 1.0
    kw = dict(cmap="bwr", vmin=-lim, vmax=lim) if signed else dict(cmap="inferno", vmin=0, vmax=lim)
    ax.imshow(array, alpha=0.55 if picture is not None else 1.0, interpolation="bilinear", **kw)
    ax.set_title(title, fontsize=8)
    ax.axis("off")
    return fig
