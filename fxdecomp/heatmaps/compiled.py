"""Token readings compiled in: heatmaps straight from images, never at the output's width.

A heatmap along a text or a direction reads each token's contribution as one number: a linear
map of it. Compiling that map into the decomposition (``decompose(..., readout=...)``) gives the
[B, C, 1] numbers directly, where a full token decomposition first builds [B, C, D] (DeiT-B:
28,407 components, 87 MB per image). ``token_maps(reader(x), size, direction=ONE)`` then draws them.
"""
from __future__ import annotations

import torch

from ..errors import InputError

#: the direction that reads a reader's one value per token as it is
ONE = torch.ones(1, dtype=torch.float64)


def token_reader(model: torch.nn.Module, *, text=None, direction=None, clip=None, aligner=None, layers=None):
    """A token-granularity ``DecomposedModel`` whose contributions are each token's reading [B, C, 1]:
    along ``text`` (embedded by ``clip``; through ``aligner``, each token by its head's map, unless
    the model's output already is CLIP's embedding) or along ``direction`` [D] of the output space
    (through ``aligner`` too when given, then a direction of CLIP space)."""
    import fxdecomp

    if (text is None) == (direction is None):
        raise InputError("token_reader reads along one thing: give text= (with clip=) or direction=")
    if text is not None:
        if clip is None:
            raise InputError("a text direction needs clip=ClipSpace(...) to embed the text")
        texts = [text] if isinstance(text, str) else list(text)
        t = clip.encode_texts(texts).double().mean(0)
    else:
        t = torch.as_tensor(direction).double()
        if t.dim() != 1:
            raise InputError(f"direction must be one vector [D], got {list(t.shape)}; a direction per image cannot "
                             "be compiled in: decompose with group='token' and read it afterwards")
    t = torch.nn.functional.normalize(t, dim=0) if text is not None else t
    dtype = next(iter(model.parameters())).dtype
    if aligner is not None:
        readout = {n: m.to(dtype) for n, m in aligner.readout(["_"], text_embeddings=t[None]).items()} \
            if text is not None else _aligned(aligner, t, dtype)
    else:
        readout = t[:, None].to(dtype)
    return fxdecomp.decompose(model, "token", layers=layers, readout=readout)


def _aligned(aligner, direction: torch.Tensor, dtype) -> dict:
    """Per component, ``W_i d``: a CLIP-space direction read through each component's map."""
    if direction.shape[0] != aligner.d_clip:
        raise InputError(f"with an aligner, direction is a vector of its {aligner.d_clip}-d CLIP space, got "
                         f"{direction.shape[0]} entries")
    w = aligner.weight.detach().double()
    return {n: (w[0 if aligner.variant == "shared" else i] @ direction)[:, None].to(dtype)
            for i, n in enumerate(aligner.names)}
