"""Models that return a tuple: open_clip towers with ``output_tokens`` (CoCa's ``visual`` returns
``(pooled, tokens)``), or any model whose tensor is chosen by position."""
from __future__ import annotations

import torch

from ..errors import InputError
from .selected import Selected

#: open_clip's names for the two parts of ``(pooled, tokens)``.
OPEN_CLIP = ("pooled", "tokens")


def _call(model, images):
    return model(images)


def _is_open_clip(model: torch.nn.Module) -> bool:
    return type(model).__module__.startswith("open_clip")


def select_tuple(model: torch.nn.Module, out: tuple, output) -> Selected:
    kind = type(model).__name__
    tensors = [i for i, v in enumerate(out) if isinstance(v, torch.Tensor)]
    names = OPEN_CLIP if _is_open_clip(model) and len(out) == 2 else ()
    if output is None:
        if not names:
            raise InputError(f"{kind} returns {len(out)} values; choose the tensor to decompose with output=INDEX "
                             f"(one of {tensors})")
        output = names[0]
    if isinstance(output, str):
        if output not in names:
            raise InputError(f"{kind} returns a tuple; output must be " +
                             (f"one of {names} or " if names else "") + f"an index in {tensors}, got {output!r}")
        index = names.index(output)
    elif isinstance(output, int) and not isinstance(output, bool) and output in tensors:
        index = output
    else:
        raise InputError(f"output={output!r} is not a tensor of {kind}'s output; choose an index in {tensors}")
    label = names[index] if names else f"[{index}]"
    others = ", ".join(repr(n) for n in names if n != label)
    note = (f"{kind}: decomposed its {label} output (element {index} of the {len(out)}-tuple it returns"
            + (f"; also available: {others}" if others else "") + ")")

    def pick(o, index=index):
        return o[index]

    return Selected(model, _call, pick, label, note)
