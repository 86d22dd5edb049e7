"""Symbolic tensors: recipes for values, factors over atoms, and terms.

A *term* is a product of factors (each a tensor whose axes are labelled with
atoms) summed over every atom that is not asked for at the end. A component's
contribution is a sum of terms. Terms are built at compile time by walking the
graph and are only turned into einsum calls by code generation, which is what
lets contractions be ordered so that nothing of size [components, tokens, dim]
is ever materialised.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable

import torch
import torch.fx as fx

from .atoms import Atom, In


class Source:
    """A recipe for a tensor available in the generated graph."""

    name: str = "value"


@dataclass(frozen=True)
class NodeValue(Source):
    """The actual value of a node of the traced graph."""

    node: fx.Node

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.node.name


@dataclass(frozen=True)
class Derived(Source):
    """``fn(*args)`` where args may be sources; evaluated once per forward."""

    fn: Callable
    args: tuple
    name: str = "derived"


@dataclass(frozen=True)
class NormStats(Source):
    """Reciprocal standard deviation computed by a normalisation node (frozen statistics)."""

    node: fx.Node
    name: str = "rstd"


@dataclass(frozen=True)
class AttentionWeights(Source):
    """softmax(q kᵀ · scale + mask) of a fused attention call, computed on demand.

    ``row`` selects one query position (the only one a class-token readout
    needs), so the full attention matrix is only built when it is consumed.
    """

    q: Source
    k: Source
    mask: Source | None
    scale: float | None
    causal: bool
    row: int | None = None
    name: str = "attn_weights"


class Constant(Source):
    """A structural tensor built at compile time (selection, centring, ones).

    Compared by identity; rules obtain them through ``ctx.constant(key, ...)``
    so equal constants are shared.
    """

    def __init__(self, tensor: torch.Tensor, name: str):
        self.tensor = tensor
        self.name = name

    def __repr__(self) -> str:
        return f"Constant({self.name}, {tuple(self.tensor.shape)})"

    def is_zero(self) -> bool:
        """Whether every entry is 0 (asked once per term that uses it, so remembered)."""
        zero = getattr(self, "_zero", None)
        if zero is None:
            zero = self._zero = not bool(self.tensor.any())
        return zero

    def reshaped(self, sizes) -> "Constant":
        """The same constant (class and all) with size-1 axes dropped or kept (``sizes`` from
        atomizing)."""
        out = copy.copy(self)
        out.tensor = self.tensor.reshape(sizes)
        return out


class Taps(Constant):
    """A convolution's 0/1 tap tensor S[out, tap, in] along one spatial axis
    (``S[o, t, i] = 1`` where ``i = o·stride − pad + t·dilation``). Its geometry is
    kept so that code generation applies it as a gather (an unfold), never as a
    dense product whose cost grows with the square of the grid."""

    def __init__(self, n_out: int, k: int, n_in: int, stride: int, pad: int, dilation: int):
        self.geometry = (n_out, k, n_in, stride, pad, dilation)
        m = torch.zeros(n_out, k, n_in, dtype=torch.float64)
        for o in range(n_out):
            for t in range(k):
                i = o * stride - pad + t * dilation
                if 0 <= i < n_in:
                    m[o, t, i] = 1.0
        super().__init__(m, f"taps_k{k}s{stride}")


class Window(Constant):
    """An average pool's map M[out, in] along one axis whose windows neither overlap nor are
    padded (stride = size: open_clip ResNet's and ResNet-D's shortcut pool), ``scale`` on each
    window. Code generation applies it as a sum over each window (a reshape): as a dense product
    it is a matrix multiplication with a tiny inner size, several times slower per term."""

    def __init__(self, n_out: int, k: int, n_in: int, scale: float):
        self.geometry = (n_out, k, n_in)
        self.scale = scale
        m = torch.zeros(n_out, n_in, dtype=torch.float64)
        for o in range(n_out):
            m[o, o * k:(o + 1) * k] = scale
        super().__init__(m, f"window_k{k}")


class OneHot(Constant):
    """Selects index ``index`` of one atom; applied by indexing, never multiplied."""

    def __init__(self, size: int, index: int):
        t = torch.zeros(size, dtype=torch.float64)
        t[index] = 1.0
        super().__init__(t, f"onehot{index}")
        self.index = index


class PartialSum(Source):
    """What some terms of one component add up to at a stream node, contracted to that
    node's atoms: materialised once, so that later ops see one term instead of one per
    path (parallel linear paths on the stream — a MobileOne block's convolutions and
    identity — multiply a component's terms at every block they are stacked in).
    Compared by identity."""

    def __init__(self, node: fx.Node, terms: tuple):
        self.node = node
        self.terms = terms
        self.name = f"partial_{node.name}"

    def __repr__(self) -> str:
        return f"PartialSum({self.node.name}, {len(self.terms)} terms)"


AxisSpec = tuple  # tuple[Atom | In, ...]


@dataclass(frozen=True)
class Factor:
    """A source tensor with one tuple of atoms per axis (empty for size-1 axes)."""

    source: Source
    axes: tuple

    @cached_property
    def atoms(self) -> tuple[Atom, ...]:
        return tuple(a for axis in self.axes for a in axis)

    def rename(self, mapping: dict) -> "Factor":
        if not mapping or not any(a in mapping for a in self.atoms):
            return self
        return Factor(self.source, tuple(tuple(mapping.get(a, a) for a in axis) for axis in self.axes))


@dataclass
class Term:
    """One product of factors belonging to a component."""

    component: Any
    factors: tuple
    coef: float = 1.0
    #: atoms renamed after the component's split was fixed (original -> current): a later
    #: op may reuse a slicing atom for its output (a cat placing a class token's row on the
    #: token axis its keys came from), so the term's key index was given an alias
    renamed: dict = field(default_factory=dict, repr=False, compare=False)
    _atoms: frozenset | None = field(default=None, repr=False, compare=False)

    @property
    def atom_set(self) -> frozenset:
        if self._atoms is None:
            self._atoms = frozenset(a for f in self.factors for a in f.atoms)
        return self._atoms


@dataclass
class Piece:
    """One summand of a node's value as a linear function of one input.

    ``arg`` is the varying input carried through (None for a constant, which is
    then given as ``const``). ``factors`` are the map's factors, with ``In(atom)``
    marking input-side atoms the map sums over; ``passthrough`` are input atoms
    kept as they are. ``split`` names atoms a component may be split along
    (heads, source tokens) when this map is an attention-weighted sum.
    """

    arg: fx.Node | None = None
    const: Factor | None = None
    factors: list = field(default_factory=list)
    passthrough: frozenset = frozenset()
    coef: float = 1.0
    split: dict | None = None
    label: str | None = None


@dataclass
class Linearization:
    """A node's value as a sum of pieces (linear maps of inputs, and constants)."""

    pieces: list


def resolve_in(axes: tuple, mapping: dict) -> tuple:
    """Replace ``In(a)`` markers by ``mapping.get(a, a)``."""
    out = []
    for axis in axes:
        out.append(tuple(mapping.get(x.atom, x.atom) if isinstance(x, In) else x for x in axis))
    return tuple(out)
