"""What every figure of the applications shares: pyplot on a file backend, and the last steps (a
title, a tight layout, a file)."""
from __future__ import annotations

from pathlib import Path


def pyplot():
    """matplotlib.pyplot, on the Agg backend unless one was chosen already (figures go to files)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def finish(fig, title: str | None = None, path: str | Path | None = None, dpi: int = 110):
    """Give ``fig`` its title and a tight layout, save it to ``path`` when one is given, return it."""
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=dpi)
    return fig
