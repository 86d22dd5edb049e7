"""Figures of the synthetic world (``python -m fxdecomp.world.figures OUT.png``)."""
from __future__ import annotations

import sys
import textwrap

import numpy as np

from .dataset import EVAL_SEED, World


def sample_grid(path: str, n: int = 12, cols: int = 6, seed: int = EVAL_SEED) -> None:
    """Images with their captions, and the object masks underneath."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    world = World(n, seed)
    rows = 2 * ((n + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.35 * rows))
    for i in range(n):
        attrs, img, mask, text = world.raw(i)
        r, c = 2 * (i // cols), i % cols
        axes[r, c].imshow(img)
        axes[r, c].set_title("\n".join(textwrap.wrap(text, 26)), fontsize=7)
        overlay = img.copy()
        overlay[~mask] = (overlay[~mask] * 0.25).astype(np.uint8)
        axes[r + 1, c].imshow(overlay)
        axes[r + 1, c].set_title(f"mask: {attrs.shape}, {attrs.size}", fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sample_grid(sys.argv[1] if len(sys.argv) > 1 else "world_samples.png")
