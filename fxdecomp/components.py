"""Component labels: what each slice of a decomposition stands for."""
from __future__ import annotations

import difflib
import operator
from dataclasses import asdict, dataclass, fields
from typing import Callable, Iterable, Iterator, Sequence

from .errors import UnknownComponentError

KINDS = ("embed", "attn", "mlp", "conv", "bias", "collapsed")


@dataclass(frozen=True)
class Component:
    """One direct contribution to the model's output.

    ``kind``: ``embed`` (the image through the stream's linear ops, or the
    output of a nonlinear stem), ``attn`` (an attention branch), ``mlp`` (a
    per-token branch, gated or not), ``conv`` (a branch that mixes
    positions: spatial convolutions or pooling), ``bias`` (a constant, or the value at 0 of a linearised
    nonlinearity), ``collapsed`` (everything before a nonlinearity on the
    stream). ``branch`` numbers the residual branch (or constant) it belongs
    to, so finer components of one branch share it. ``split`` says what ``head`` and
    ``token`` mean for this branch (e.g. ``head+token``; ``token`` indexes channels
    in channel-attention models, ``head+window+token`` marks windowed attention;
    ``neuron`` marks one hidden unit of an MLP branch, numbered by ``neuron``).
    """

    index: int
    name: str
    kind: str
    module: str = ""
    module_type: str = ""
    layer: int | None = None
    branch: int = 0
    head: int | None = None
    token: int | None = None
    row: int | None = None
    col: int | None = None
    prefix: str | None = None
    split: str | None = None
    neuron: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def ancestors(self) -> tuple[str, ...]:
        """The names this component's slice has at coarser granularities, finest first: a token's
        head (``blocks.5.attn[h2]`` for ``blocks.5.attn[h2,t7]``), then its whole branch."""
        base = self.name.split("[")[0]
        out = []
        if self.head is not None and self.token is not None:
            out.append(f"{base}[h{self.head}]")
        if base != self.name:
            out.append(base)
        return tuple(out)


class ComponentTable(Sequence[Component]):
    """An ordered, searchable list of components."""

    def __init__(self, components: Iterable[Component]):
        self._items = list(components)
        self._by_name = {c.name: c.index for c in self._items}

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, str):
            return self._items[self.index(i)]
        if isinstance(i, slice):
            return self._items[i]
        return self._items[i]

    def __iter__(self) -> Iterator[Component]:
        return iter(self._items)

    def __repr__(self) -> str:
        return f"ComponentTable({len(self)} components)"

    @property
    def names(self) -> list[str]:
        return [c.name for c in self._items]

    def index(self, name: str) -> int:  # type: ignore[override]
        """Position of the component called ``name``."""
        try:
            return self._by_name[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._by_name, n=3)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise UnknownComponentError(
                f"no component named {name!r}.{hint} (see .components.names for all {len(self)})") from None

    def where(self, predicate: Callable[[Component], bool] | None = None, **match) -> list[int]:
        """Indices of components matching ``predicate`` and every ``field=value`` given."""
        valid = {f.name for f in fields(Component)}
        bad = set(match) - valid
        if bad:
            raise UnknownComponentError(f"components have no field(s) {sorted(bad)}; fields: {sorted(valid)}")
        out = []
        for c in self._items:
            if predicate is not None and not predicate(c):
                continue
            if all(_matches(getattr(c, k), v) for k, v in match.items()):
                out.append(c.index)
        return out

    def resolve(self, selector) -> list[int]:
        """Indices from a name, an index, a list of either, or a predicate."""
        if callable(selector) and not isinstance(selector, str):
            return self.where(selector)
        if is_single(selector):
            selector = [selector]
        elif isinstance(selector, (bytes, float, complex, bool)) or not hasattr(selector, "__iter__"):
            raise UnknownComponentError(_bad_selector(selector))
        out = []
        for s in selector:
            if isinstance(s, str):
                out.append(self.index(s))
            elif is_single(s):
                i = operator.index(s)
                if not -len(self) <= i < len(self):
                    raise UnknownComponentError(f"component index {i} out of range (0..{len(self) - 1})")
                out.append(i % len(self))
            else:
                raise UnknownComponentError(_bad_selector(s))
        return out

    def table(self, rows: Sequence[int] | None = None, extra: dict | None = None) -> str:
        """A plain-text table of (some of) the components."""
        rows = list(range(len(self))) if rows is None else list(rows)
        cols = ["index", "name", "kind", "layer", "head", "token"]
        extra = extra or {}
        head = cols + list(extra)
        data = []
        for i in rows:
            c = self._items[i]
            vals = [str(getattr(c, k)) if getattr(c, k) is not None else "" for k in cols]
            vals += [extra[k][i] for k in extra]
            data.append(vals)
        widths = [max(len(h), *(len(r[j]) for r in data)) if data else len(h) for j, h in enumerate(head)]
        line = "  ".join(h.ljust(w) for h, w in zip(head, widths))
        body = ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in data]
        return "\n".join([line, "-" * len(line)] + body)


def is_single(selector) -> bool:
    """A name or a whole-number index (an int, a NumPy integer, a 0-d integer tensor), not a bool."""
    if isinstance(selector, str):
        return True
    if isinstance(selector, bool) or not hasattr(selector, "__index__"):
        return False
    try:
        operator.index(selector)
    except TypeError:
        return False
    return True


def _bad_selector(s) -> str:
    return (f"cannot select components with {s!r} ({type(s).__name__}): use a name, a whole-number index, a list "
            "of them, or a predicate")


def _matches(value, want) -> bool:
    if isinstance(want, (list, tuple, set, frozenset, range)):
        return value in want
    return value == want
