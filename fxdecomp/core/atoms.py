"""Index atoms: named, sized axes that tie the tensors of a graph together.

Every axis of every tensor in a traced graph is described as a tuple of atoms in
row-major order. Reshapes *refine* atoms (a 768-wide feature atom becomes
(12 heads, 64 dims)); broadcasting ops *unify* them (the token axis of the
residual stream and of ``pos_embed`` are one atom). Two axes that carry the same
atom index the same thing, so a chain of linear maps reads as an einsum over
atoms, and a token or head can be followed through reshapes, window partitions
and concatenations without knowing the model.

Roles say what an atom indexes: ``batch``, ``spatial`` (pixels, tokens, windows),
``channel`` (features, heads) or ``other``. Origins record where an atom came
from, so component labels can name the source token's (row, col).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from math import prod
from typing import Iterable, Sequence

ROLE_RANK = {"other": 0, "channel": 1, "spatial": 2, "batch": 3}
#: most indices described to place one index of a partly summed axis on a coarser grid
MAX_COARSE = 4096
# How informative an origin is when two atoms are unified; the richer one is kept.
ORIGIN_RANK = {"opaque": 0, "param": 1, "broadcast": 1, "feature": 2, "image": 3,
               "slice": 4, "roll": 4, "pad": 4, "regroup": 4, "grid": 5, "cat": 6, "batch": 7}

Axis = tuple  # tuple[Atom, ...]


class Atom:
    """One index dimension. Union-find node; may be refined into parts."""

    __slots__ = ("id", "size", "origin", "role", "_parent", "_parts", "alias_of", "__weakref__")

    def __init__(self, id: int, size: int, origin: tuple, role: str, alias_of: "Atom | None" = None):
        self.id = id
        self.size = size
        self.origin = origin
        self.role = role
        self._parent: Atom | None = None
        self._parts: tuple[Atom, ...] | None = None
        self.alias_of = alias_of

    def __repr__(self) -> str:
        tag = "~" if self.alias_of is not None else ""
        return f"a{self.id}{tag}:{self.size}"


class AtomTable:
    """Creates, refines and unifies atoms for one graph."""

    def __init__(self) -> None:
        self._count = itertools.count()
        self._aliases: dict[tuple, Atom] = {}
        self.batch: Atom | None = None
        self._describing: set = set()

    # -- creation -----------------------------------------------------------------
    def new(self, size: int, origin: tuple = ("opaque",), role: str = "other") -> Atom:
        if size < 2:
            raise ValueError("atoms are only made for axes of size >= 2")
        return Atom(next(self._count), int(size), origin, role)

    def axis(self, size: int, origin: tuple = ("opaque",), role: str = "other") -> Axis:
        """A fresh axis: one atom, or no atom for a size-1 (or empty) axis."""
        return () if size <= 1 else (self.new(size, origin, role),)

    def alias(self, atom: Atom, tag) -> Atom:
        """A stand-in for ``atom`` used where one term needs two copies of an index.

        Deterministic per (atom, tag) so that terms built through the same node
        share factors and their contractions can be reused.
        """
        key = (atom.id, tag)
        hit = self._aliases.get(key)
        if hit is None:
            base = atom.alias_of or atom
            hit = Atom(next(self._count), atom.size, atom.origin, atom.role, alias_of=base)
            self._aliases[key] = hit
        return hit

    # -- union-find ---------------------------------------------------------------
    def find(self, a: Atom) -> Atom:
        root = a
        while root._parent is not None:
            root = root._parent
        while a._parent is not None:  # path compression
            a._parent, a = root, a._parent
        return root

    def leaves(self, a: Atom) -> tuple[Atom, ...]:
        r = self.find(a)
        if r._parts is None:
            return (r,)
        return tuple(x for p in r._parts for x in self.leaves(p))

    def resolve(self, axis: Iterable[Atom]) -> Axis:
        return tuple(x for a in axis for x in self.leaves(a))

    def refine(self, a: Atom, sizes: Sequence[int]) -> tuple[Atom, ...]:
        r = self.find(a)
        if r._parts is not None:
            raise AssertionError("refine() expects a leaf atom")
        if prod(sizes) != r.size or any(s < 2 for s in sizes):
            raise ValueError(f"cannot refine {r} into {tuple(sizes)}")
        if r.role == "batch":
            raise RefineError("the batch axis would be split; the model reshapes its batch axis")
        r._parts = tuple(
            Atom(next(self._count), s, ("part", r, i), r.role) for i, s in enumerate(sizes)
        )
        return r._parts

    def _union(self, a: Atom, b: Atom) -> None:
        a, b = self.find(a), self.find(b)
        if a is b:
            return
        assert a._parts is None and b._parts is None and a.size == b.size
        if _origin_rank(b) > _origin_rank(a):
            a, b = b, a  # keep the richer origin on the root
        b._parent = a
        if ROLE_RANK[b.role] > ROLE_RANK[a.role]:
            a.role = b.role

    def promote(self, axis: Iterable[Atom], role: str) -> None:
        for a in axis:
            for leaf in self.leaves(a):
                if ROLE_RANK[role] > ROLE_RANK[leaf.role]:
                    leaf.role = role

    def unify(self, xs: Axis, ys: Axis) -> bool:
        """Make two descriptions of the same axis agree. False if impossible."""
        while True:
            lx, ly = list(self.resolve(xs)), list(self.resolve(ys))
            if prod(a.size for a in lx) != prod(a.size for a in ly):
                return False
            changed = False
            i = j = 0
            while i < len(lx) and j < len(ly):
                a, b = lx[i], ly[j]
                if a is b or a.size == b.size:
                    if a is not b:
                        self._union(a, b)
                    i, j = i + 1, j + 1
                    continue
                big, small = (a, b) if a.size > b.size else (b, a)
                if big.size % small.size:
                    return False
                self.refine(big, [small.size, big.size // small.size])
                changed = True
                break
            if not changed:
                return True

    # -- reshapes -------------------------------------------------------------------
    def reshape(self, axes: Sequence[Axis], out_shape: Sequence[int]) -> list[Axis] | None:
        """Atoms of a row-major reshape of ``axes`` into ``out_shape``; None if the
        new axis boundaries cut atoms in a way no refinement can express."""
        flat = list(self.resolve(a for axis in axes for a in axis))
        out: list[Axis] = []
        k = 0
        for size in out_shape:
            need = int(size)
            got: list[Atom] = []
            while need > 1:
                if k >= len(flat):
                    return None
                leaf = flat[k]
                if leaf.size <= need:
                    if need % leaf.size:
                        return None
                    got.append(leaf)
                    need //= leaf.size
                    k += 1
                else:
                    if leaf.size % need:
                        return None
                    head, tail = self.refine(leaf, [need, leaf.size // need])
                    flat[k:k + 1] = [head, tail]
                    got.append(head)
                    need = 1
                    k += 1
            out.append(tuple(got))
        if k != len(flat):
            return None
        return out

    def regroup(self, axes: Sequence[Axis], out_shape: Sequence[int]) -> list[Axis]:
        """Fresh atoms for a reshape whose axis boundaries cut the input's atoms across
        (a 14-long axis already split 2 x 7 by window partitioning, now viewed as 7 x 2
        by a patch merging or a grid partition). The new atoms are the row-major parts of
        one atom that remembers the input axis, so token provenance survives; the linear
        map between the two is the identity on the flat index (``rules.movement.regroup_factor``)."""
        flat = self.resolve(a for axis in axes for a in axis)
        if any(a.role == "batch" for a in flat):
            raise RefineError("the batch axis would be regrouped; the model reshapes its batch axis")
        n = prod(out_shape)
        if n < 2:
            return [() for _ in out_shape]
        role = max((a.role for a in flat), key=lambda r: ROLE_RANK[r], default="other")
        top = self.new(n, ("regroup", tuple(flat)), role)
        out = self.reshape([(top,)], out_shape)
        assert out is not None
        return out

    # -- provenance ------------------------------------------------------------------
    def coordinates(self, atoms: Sequence[Atom]) -> list[dict]:
        """For every index of ``atoms`` (row-major), what it points at.

        Keys that may appear: ``row``/``col`` (position on a token grid) with ``rows``/``cols``
        (that grid's extent: the size of the atom the position indexes, or of the coarser grid
        a merging makes of it), ``prefix`` (name of a learned token such as ``cls_token``),
        ``padding``.
        See ``_describe`` for how parts of refined axes are put back together.
        """
        canon = [self.find(a.alias_of or a) for a in atoms]
        ranges = [range(a.size) for a in canon]
        return [self._describe(dict(zip(canon, combo))) for combo in itertools.product(*ranges)]

    def _describe(self, idx: dict) -> dict:
        """Merge what each index points at. Leaves of one refined axis are put back
        together; if only its leading leaves are given (the rest were summed, as by a
        patch merging), they index a coarser grid."""
        groups: dict = {}
        for leaf, i in idx.items():
            top = leaf
            while top.origin[0] == "part":
                top = self.find(top.origin[1])
            groups.setdefault(top, {})[leaf] = i
        rec: dict = {}
        for top, given in groups.items():
            if top in self._describing:
                continue  # provenance that leads back to itself (a cat of slices of one axis)
            leaves = [self.find(x) for x in self.leaves(top)]
            k = len(given)
            if set(leaves[:k]) != set(given):
                rec.update(self._coarse(top, leaves, given))
                continue
            v = 0
            for leaf in leaves[:k]:
                v = v * leaf.size + given[leaf]
            if k == len(leaves):
                self._describing.add(top)
                try:
                    rec.update(self._record(top, v))
                finally:
                    self._describing.discard(top)
            elif self._grid_key(top):
                key = self._grid_key(top)
                rec[key] = v
                rec[key + "s"] = prod(leaf.size for leaf in leaves[:k])  # a grid as coarse as the leaves given
        return rec

    def _coarse(self, top: Atom, leaves: list, given: dict) -> dict:
        """What some (not leading) leaves of a refined axis index: the others were summed or
        merged (a 2x2 token merge keeps the high parts of a row and a column). Every index
        they stand for is described; where the rows (or columns) covered form one aligned
        block of L, the position is that block's on a grid L times coarser."""
        missing = [leaf for leaf in leaves if leaf not in given]
        if prod(leaf.size for leaf in missing) > MAX_COARSE:
            return {}
        seen: dict = {}
        self._describing.add(top)
        try:
            for combo in itertools.product(*(range(leaf.size) for leaf in missing)):
                idx = dict(given)
                idx.update(zip(missing, combo))
                v = 0
                for leaf in leaves:
                    v = v * leaf.size + idx[leaf]
                for key, val in self._record(top, v).items():
                    seen.setdefault(key, set()).add(val)
        finally:
            self._describing.discard(top)
        out = {}
        for key in ("row", "col"):
            vals = seen.get(key)
            if vals and all(isinstance(v, int) for v in vals):
                lo, span = min(vals), max(vals) - min(vals) + 1
                if len(vals) == span and lo % span == 0:
                    out[key] = lo // span
                    extent = seen.get(key + "s")
                    if extent and len(extent) == 1:
                        out[key + "s"] = -(-next(iter(extent)) // span)  # the grid L times coarser
        return out

    def _unravel(self, axis: Axis, flat: int) -> dict:
        leaves = self.resolve(axis)
        out = {}
        for leaf in reversed(leaves):
            out[self.find(leaf)] = flat % leaf.size
            flat //= leaf.size
        return out

    def _grid_key(self, a: Atom) -> str | None:
        o = a.origin
        if o[0] in ("grid", "image") and o[1] in ("row", "col"):
            return o[1]
        if o[0] in ("regroup", "roll", "pad", "slice") and o[1]:  # look through to the axis it came from
            top = self.find(o[1][0])
            while top.origin[0] == "part":
                top = self.find(top.origin[1])
            return self._grid_key(top)
        return None

    def _record(self, a: Atom, i: int) -> dict:
        o = a.origin
        kind = o[0]
        if kind in ("grid", "image"):
            key = self._grid_key(a)
            return {key: i, key + "s": a.size} if key else {}
        if kind == "cat":
            start = 0
            for seg_axis, seg_size, name, *offset in o[1]:  # offset: a row sliced from seg_axis
                if i < start + seg_size:
                    at = i - start + (offset[0] if offset else 0)
                    inner = self._describe(self._unravel(seg_axis, at)) if seg_axis else {}
                    if inner or name is None:
                        return inner
                    return {"prefix": name} if seg_size == 1 else {"prefix": f"{name}[{i - start}]"}
                start += seg_size
            return {}
        if kind == "slice":
            return self._describe(self._unravel(o[1], o[2] + i * o[3]))
        if kind == "regroup":
            return self._describe(self._unravel(o[1], i))
        if kind == "roll":
            n = axis_size(o[1])
            return self._describe(self._unravel(o[1], (i - o[2]) % n))
        if kind == "pad":
            j = i - o[2]
            if 0 <= j < axis_size(o[1]):
                return self._describe(self._unravel(o[1], j))
            return {"padding": True}
        return {}


def _origin_rank(a: Atom) -> int:
    """How informative an atom's origin is; a part of a refined atom ranks as its parent."""
    while a.origin[0] == "part":
        a = a.origin[1]
    return ORIGIN_RANK.get(a.origin[0], 0)


class RefineError(ValueError):
    """An axis split that cannot be expressed (e.g. of the batch axis)."""


@dataclass(frozen=True)
class In:
    """Marks the input side of an atom in a factor of a linear map (see expand pass)."""

    atom: Atom


def axis_size(axis: Axis) -> int:
    return prod(a.size for a in axis)

