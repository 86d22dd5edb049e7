"""Image grids: the top images of components, and the images retrieved for queries."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..figure import finish, pyplot


def image_grid(images, rows: Sequence[tuple[str, Sequence[int]]], *, queries: Sequence[int | None] | None = None,
               marks: Sequence[Sequence[bool]] | None = None, path=None, title: str = "", cell: float = 1.1):
    """One row per (title, image indices). With ``queries``, a row starts with its query image
    (framed); ``marks`` frames each retrieved image green (True) or red (False). Returns the figure."""
    plt = pyplot()

    images = np.asarray(images)
    lead = 1 if queries is not None else 0
    cols = lead + max(len(r[1]) for r in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(cell * cols + 1.6, cell * len(rows) + 0.3), squeeze=False)
    for r, (label, idx) in enumerate(rows):
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
        if lead and queries[r] is not None:
            ax = axes[r, 0]
            ax.imshow(images[queries[r]])
            for s in ax.spines.values():
                s.set_visible(True)
                s.set_color("black")
                s.set_linewidth(2.5)
            ax.set_xlabel("query", fontsize=6)
        for j, i in enumerate(idx):
            ax = axes[r, lead + j]
            ax.imshow(images[int(i)])
            if marks is not None:
                for s in ax.spines.values():
                    s.set_visible(True)
                    s.set_color("tab:green" if marks[r][j] else "tab:red")
                    s.set_linewidth(2)
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    return finish(fig, title, path, dpi=100)
