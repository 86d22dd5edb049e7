"""A run read through a readout: what its manifest records of the readout, and the checks that keep
readout runs and full runs apart.

A readout run stores each component read through ``R`` ([N, C, K] shards, outputs [N, K]): K numbers
per component instead of the output's width. Its manifest records the readout (how it was named,
K, a hash of the matrix, the columns' names), so a rerun into the folder with another readout is
refused (it would mix two readings), and everything that needs the contributions at the output's
width (CompAlign, retrieval, the spurious experiment, the report) refuses the run, naming the fix.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..errors import InputError
from ..hashing import tensors_digest


def readout_record(readout, spec: str | None, names: Sequence[str] | None = None) -> dict:
    """What ``run.json`` records of ``readout`` (a [D, K] tensor, or a mapping from component names
    to one each): ``spec`` (how it was given), ``k``, ``sha256`` of the matrices' bytes, ``names``
    of the K columns (None when unknown) and ``per_component`` (whether each component has its own)."""
    if isinstance(readout, Mapping):
        if not readout:
            raise InputError("the readout mapping is empty: give one [D, K] matrix per component name")
        items = sorted(readout.items())
        bad = [n for n, r in items if not isinstance(r, torch.Tensor) or r.dim() < 2]
        if bad:
            raise InputError(f"the readout of {bad[0]!r} is not a [D, K] tensor; give one matrix per component name")
        ks = {int(r.shape[-1]) for _, r in items}
        if len(ks) != 1:
            raise InputError(f"the per-component readouts have different widths {sorted(ks)}: give every "
                             "component a matrix with the same K columns")
        k = ks.pop()
    elif isinstance(readout, torch.Tensor) and readout.dim() >= 2:
        items, k = [("R", readout)], int(readout.shape[-1])
    else:
        shape = list(readout.shape) if isinstance(readout, torch.Tensor) else type(readout).__name__
        raise InputError(f"readout must be a [D, K] tensor (or a mapping of component names to one), got {shape}")
    for name, r in items:
        what = "the readout" if name == "R" and not isinstance(readout, Mapping) else f"the readout of {name!r}"
        if not r.is_floating_point():
            raise InputError(f"{what} is {r.dtype}: give a floating-point matrix (e.g. R.float())")
        if not bool(torch.isfinite(r).all()):
            raise InputError(f"{what} has {int((~torch.isfinite(r)).sum())} non-finite entries: every entry must "
                             "be finite; check how it was computed (a direction normalised by a zero norm?)")
    if names is not None:
        names = [str(n) for n in names]
        if len(names) != k:
            raise InputError(f"{len(names)} column names for a readout of K = {k} columns: give one name per column")
    return {"spec": str(spec) if spec is not None else "readout=", "k": k, "sha256": tensors_digest(items),
            "names": names, "per_component": isinstance(readout, Mapping)}


def describe(record: dict | None) -> str:
    """A readout record in words, for messages: its spec and width, or 'no readout'."""
    if record is None:
        return "no readout (full contributions)"
    return f"readout {record.get('spec')!r} (K = {record.get('k')}, sha256 {str(record.get('sha256'))[:12]}...)"


def check_same_readout(old: dict | None, new: dict | None, folder) -> None:
    """A rerun into ``folder`` must read through the readout its run was started with (or none as it did)."""
    same = (old is None and new is None) or (old is not None and new is not None and
                                             (old.get("k"), old.get("sha256")) == (new.get("k"), new.get("sha256")))
    if not same:
        raise InputError(f"{folder} holds a run with {describe(old)}, but this one asks for {describe(new)}; "
                         "decompose into another --out folder (a run cannot mix two readings), or delete this one "
                         "to start over")


def width_of(manifest: dict) -> int:
    """The width of what a run's shards hold per component: K for a readout run, else the output's."""
    r = manifest.get("readout")
    return int(r["k"]) if isinstance(r, dict) else int(manifest["d_model"])


def column_index(k: int, names, column: int | None = None, text: str | None = None, where: str = "the readout") -> int:
    """Which of a readout's ``k`` columns to read: ``column``, or the one named ``text``, or the only one."""
    if column is not None and text is not None:
        raise InputError("--column and --text each choose the column: give one")
    if text is not None:
        if not names or text not in names:
            known = f"its columns are named {list(names)[:8]}" if names else "its columns have no names"
            raise InputError(f"no readout column of {where} is named {text!r} ({known}); give one of those names, "
                             "or --column K")
        return list(names).index(text)
    if column is None:
        if k == 1:
            return 0
        raise InputError(f"{where} reads {k} columns: choose one with --column 0..{k - 1}"
                         + (" or --text NAME" if names else ""))
    if isinstance(column, bool) or not isinstance(column, int) or not 0 <= column < k:
        raise InputError(f"column {column!r} is out of range: {where} has K = {k} columns (0..{k - 1})")
    return column


def refuse_readout_run(run, what: str) -> None:
    """Raise ``InputError`` when ``run`` (anything with ``readout`` and ``path``) is a readout run:
    ``what`` needs the contributions at the output's width."""
    r = getattr(run, "readout", None)
    if r is None:
        return
    raise InputError(f"{run.path} is a readout run: it stores each component read through {describe(r)}, "
                     f"[N, C, {r['k']}], not at the output's width, and {what} needs the full contributions; "
                     "decompose the model again without --readout into another --out folder (or use this run "
                     "with fxdecomp heatmap, segment or verify, which read readout runs)")
