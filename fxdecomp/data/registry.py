"""Data source types: each one registers how it is named on the command line, what a run records about
it and how a run opens it again, in its own file; nothing else lists them.

A new type is one new file (imported by ``fxdecomp.data``) calling ``register_source``: the command
line (``open_data``), the run store's record (``describe_source``) and ``Run.data()`` (``reopen``)
then know it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import InputError


@dataclass(frozen=True)
class SourceType:
    """``name`` is what a run records (its source's ``"kind"`` key, kept so that older runs open); ``cls`` the
    data set class; ``names(spec)`` whether a command-line spec means this type; ``open(spec, size, split)``
    opens it; ``describe(data)`` what a run records beyond ``ids`` and ``labels``... (it returns those too);
    ``reopen(record)`` opens it again from that record. Types are tried in ``priority`` order, lowest first."""

    name: str
    cls: type
    names: Callable[[str], bool]
    open: Callable[[str, int | None, str | None], Any]
    describe: Callable[[Any], dict]
    reopen: Callable[[dict], Any]
    priority: int = 100


_TYPES: dict[str, SourceType] = {}


def register_source(source: SourceType) -> SourceType:
    if source.name in _TYPES and _TYPES[source.name].cls is not source.cls:
        raise InputError(f"a data source type {source.name!r} is registered already ({_TYPES[source.name].cls.__name__})")
    _TYPES[source.name] = source
    return source


def source_types() -> list[SourceType]:
    return sorted(_TYPES.values(), key=lambda t: t.priority)


def open_data(spec: str, size: int | None = None, split: str | None = None):
    """The data set ``spec`` names. Folders' images come at their own size (a model's preprocessing
    resizes them, once), or with ``size`` resized and centre-cropped to that square first."""
    for t in source_types():
        if t.names(spec):
            return t.open(spec, size, split)
    raise InputError(f"data {spec!r} is neither world:N[:SEED] nor an existing folder")


def describe_source(data) -> dict:
    """What a run records about its data: its type (``kind``), where, and each image's id and labels."""
    for t in source_types():
        if isinstance(data, t.cls):
            return {"kind": t.name, **t.describe(data)}
    if callable(getattr(data, "ids", None)):  # any other data set that names its images
        labels = data.labels() if callable(getattr(data, "labels", None)) else {}
        return {"kind": type(data).__name__, "ids": list(data.ids()), "labels": labels}
    raise InputError(f"cannot describe a data source of type {type(data).__name__}: give it an ids() method "
                     "returning one name per image (and optionally labels() returning {name: [value per image]})")


def reopen(record: dict, run: str = "the run"):
    """The data set a run's source ``record`` describes (raises KeyError where the record lacks a field)."""
    kind = record.get("kind") if isinstance(record, dict) else None
    if kind not in _TYPES:
        known = ", ".join(t.name for t in source_types())
        raise InputError(f"{run}: the images of a run of {kind!r} data cannot be opened again by fxdecomp (it opens "
                         f"{known})")
    return _TYPES[kind].reopen(record)
