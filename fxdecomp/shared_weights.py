"""The parameters and buffers a compiled module shares with its model, and the check, on every
call, that the model still holds them.

The compiled module computes with the very tensors the model holds, so an in-place change
(``with torch.no_grad(): w.mul_(2)``, ``load_state_dict``, an optimiser step) is followed. But
``model.head.weight = Parameter(...)``, ``model.head = nn.Linear(...)`` or ``load_state_dict(...,
assign=True)`` put *new* objects into the model, and the compiled module would go on computing
the old model's numbers while ``out.error()`` still said 1e-6. The check compares each shared
object, and every submodule on the way to it, with what the model holds now: a few hundred
dictionary look-ups, some microseconds per call.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .errors import InputError


class _Entry(NamedTuple):
    table: dict  # the model's _modules, _parameters or _buffers dict that holds the object
    key: str
    expected: object
    name: str  # qualified name in the model
    kind: str  # "submodule", "parameter" or "buffer"


class SharedWeights:
    """``check()`` raises ``InputError`` naming the first shared object the model no longer holds."""

    def __init__(self, model: torch.nn.Module, gm: torch.nn.Module):
        entries: dict[tuple[int, str], _Entry] = {}
        gm_tensors = [*gm.named_parameters(remove_duplicate=False), *gm.named_buffers(remove_duplicate=False)]
        for name, tensor in gm_tensors:
            chain = _chain(model, name)
            if chain is None or chain[-1].expected is not tensor:
                continue  # the compiled module's own constant, or a copy of the model's: nothing shared
            for e in chain:
                entries.setdefault((id(e.table), e.key), e)
        self.entries = list(entries.values())

    def check(self) -> None:
        for e in self.entries:
            if e.table.get(e.key) is not e.expected:
                self._raise(e)

    def _raise(self, e: _Entry) -> None:
        now = e.table.get(e.key)
        what = "removed" if now is None else "replaced by a new object"
        getter = "get_parameter" if e.kind == "parameter" else "get_buffer"
        how = (f" To change a {e.kind} and keep the compiled module, change it in place instead: with "
               f"torch.no_grad(): model.{getter}({e.name!r}).copy_(new).") if e.kind != "submodule" else ""
        raise InputError(f"the model's {e.kind} '{e.name}' was {what} after decompose(): the compiled module still "
                         f"holds the old one and would not decompose the model as it is now. Call "
                         f"fxdecomp.decompose(model) again.{how}")

    def adopt_converted(self, gm: torch.nn.Module) -> None:
        """After ``dm.to(...)``: the compiled module's buffers are converted copies, and the model's are
        new objects if the model was converted too. Expect those that hold the same values."""
        for i, e in enumerate(self.entries):
            if e.kind != "buffer":
                continue
            now = e.table.get(e.key)
            if now is e.expected or not isinstance(now, torch.Tensor):
                continue
            try:
                mine = gm.get_buffer(e.name)
            except AttributeError:
                continue
            if now.shape == mine.shape and torch.equal(now.to(device=mine.device, dtype=mine.dtype), mine):
                self.entries[i] = e._replace(expected=now)


def _chain(model: torch.nn.Module, name: str) -> list[_Entry] | None:
    """Entries for every submodule on the way to ``name`` and for the tensor itself (None if the
    model has no such parameter or buffer)."""
    *path, leaf = name.split(".")
    out, mod = [], model
    for i, part in enumerate(path):
        child = mod._modules.get(part)
        if child is None:
            return None
        out.append(_Entry(mod._modules, part, child, ".".join(path[:i + 1]), "submodule"))
        mod = child
    for table, kind in ((mod._parameters, "parameter"), (mod._buffers, "buffer")):
        if leaf in table and table[leaf] is not None:
            out.append(_Entry(table, leaf, table[leaf], name, kind))
            return out
    return None
