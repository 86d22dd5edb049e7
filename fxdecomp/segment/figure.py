"""A figure of segmentation maps: each image, its true mask and every method's map."""
from __future__ import annotations

import numpy as np
import torch

from ..figure import finish, pyplot
from .metrics import normalise, to_size


def segmentation_figure(images, masks, maps: dict[str, torch.Tensor], n: int = 6, path=None, title: str = ""):
    """Rows: the first ``n`` images; columns: the image, its mask, each method's map (its
    foreground, above the map's mean, outlined). Saved to ``path`` when given; returns the figure."""
    plt = pyplot()

    images = np.asarray(images)[:n]
    masks = np.asarray(masks)[:n]
    size = masks.shape[-2:]
    cols = 2 + len(maps)
    fig, axes = plt.subplots(len(images), cols, figsize=(1.7 * cols, 1.75 * len(images)), squeeze=False)
    soft = {m: normalise(to_size(v[:n].detach().cpu(), size)).numpy() for m, v in maps.items()}
    for i, img in enumerate(images):
        axes[i, 0].imshow(img)
        axes[i, 1].imshow(masks[i], cmap="gray")
        for j, (m, s) in enumerate(soft.items()):
            ax = axes[i, 2 + j]
            ax.imshow(img)
            ax.imshow(s[i], cmap="jet", alpha=0.5, vmin=0, vmax=1)
            ax.contour(s[i] > s[i].mean(), levels=[0.5], colors="white", linewidths=0.8)
            if i == 0:
                ax.set_title(m, fontsize=8)
    axes[0, 0].set_title("image", fontsize=8)
    axes[0, 1].set_title("true mask", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    return finish(fig, title, path, dpi=110)
