"""Text embeddings as the scoring functions receive them."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..errors import InputError


def text_matrix(descriptions: Sequence[str], clip=None, text_embeddings: torch.Tensor | None = None,
                dim: int | None = None) -> torch.Tensor:
    """[k, d] float64 unit text embeddings, from ``text_embeddings`` or by encoding with ``clip``."""
    if isinstance(descriptions, str):
        descriptions = [descriptions]
    if text_embeddings is None:
        if clip is None:
            raise InputError("pass clip=ClipSpace(...) to embed the descriptions, or text_embeddings=[k, d]")
        text_embeddings = clip.encode_texts(list(descriptions))
    t = torch.as_tensor(text_embeddings).detach().cpu().double()
    if t.dim() != 2 or t.shape[0] != len(descriptions):
        raise InputError(f"text embeddings {list(t.shape)} do not fit {len(descriptions)} descriptions")
    if dim is not None and t.shape[1] != dim:
        raise InputError(f"text embeddings have width {t.shape[1]} but the aligned contributions live in a "
                         f"{dim}-d CLIP space: embed the texts with the CLIP the aligner was trained for")
    return F.normalize(t, dim=1)
