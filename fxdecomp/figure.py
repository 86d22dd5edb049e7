"""The last steps every figure of the applications shares: a title, a tight layout, a file."""
from __future__ import annotations

from pathlib import Path


def finish(fig, title: str | None = None, path: str | Path | None = None, dpi: int = 110):
    """Give ``fig`` its title and a tight layout, save it to ``path`` when one is given, return it."""
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=dpi)
    return fig
