"""Figures for the report, as PNG data URIs so the page is one self-contained file."""
from __future__ import annotations

import base64
import io

import numpy as np

from ..figure import pyplot


def data_uri(fig, dpi: int = 100) -> str:
    plt = pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def bars(labels, values, title: str, xlabel: str, color: str = "tab:blue") -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 0.28 * len(labels) + 0.9))
    y = np.arange(len(labels))[::-1]
    ax.barh(y, values, color=color)
    ax.set_yticks(y, labels, fontsize=7)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="x", labelsize=7)
    return data_uri(fig)


def image_strip(images: np.ndarray, captions=None) -> str:
    plt = pyplot()
    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(1.05 * n, 1.25), squeeze=False)
    for k, ax in enumerate(axes[0]):
        ax.imshow(images[k])
        ax.axis("off")
        if captions is not None:
            ax.set_title(captions[k], fontsize=6)
    return data_uri(fig)


def heatmap_strip(pictures, arrays, titles) -> str:
    from ..heatmaps.heatmap import draw

    plt = pyplot()
    n = len(pictures)
    fig, axes = plt.subplots(1, n, figsize=(1.6 * n, 1.75), squeeze=False)
    for ax, pic, arr, title in zip(axes[0], pictures, arrays, titles):
        draw(arr, pic, ax=ax, title=title, signed=True)
    return data_uri(fig)
