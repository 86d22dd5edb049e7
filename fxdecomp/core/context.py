"""The one context every rule hook receives: what a rule may ask about the graph, and what it
may make for the walk.

Axes come in two forms, with two names. While the axes pass runs, a node's axes are those its
rule gave (``raw_axes``): their atoms may still be refined or unified by later ops, and
``Rule.axes`` works on them (``unify``, ``table.reshape`` resolve what they need). Once the pass
is done every axis is resolved to its finest atoms (``axes``, ``atoms``): that is what
``Rule.linearize`` and ``Rule.reads`` read.
"""
from __future__ import annotations

import torch
import torch.fx as fx

from ..errors import UnsupportedOpError
from .atoms import AtomTable, In, RefineError
from .ir import is_varying
from .shape import item_shapes, shape_of
from .state import CompileState
from .terms import Constant, Derived, Factor, NodeValue, NormStats, OneHot, Taps, Window
from .where import module_of, param_name, unsupported


class RuleContext:
    """Handed to ``Rule.axes``, ``Rule.linearize`` and ``Rule.reads`` (one per pass that asks)."""

    def __init__(self, state: CompileState):
        self.state = state
        self._constants: dict = {}

    # -- the graph --------------------------------------------------------------------------
    @property
    def table(self) -> AtomTable:
        return self.state.axes.table

    def shape(self, x) -> tuple | None:
        """Concrete shape of a tensor-valued node (None for non-tensors and tuples)."""
        return shape_of(x)

    def item_shapes(self, x) -> list | None:
        """Shapes of the items of a tuple-valued node."""
        return item_shapes(x)

    def varying(self, x) -> bool:
        """Whether ``x`` depends on the image's values."""
        return is_varying(self.state.flow, x)

    def param_name(self, x) -> str | None:
        """Qualified name of the parameter behind ``x`` (for a bias component's label)."""
        return param_name(x)

    def module_of(self, node) -> str:
        return module_of(node)

    # -- axes ---------------------------------------------------------------------------------
    def raw_axes(self, x):
        """``x``'s axes as its rule gave them in the axes pass (None for a non-tensor)."""
        return self.state.axes.raw.get(x) if isinstance(x, fx.Node) else None

    def axes(self, x):
        """``x``'s axes, each resolved to its finest atoms (after the axes pass)."""
        try:
            return self.state.axes.resolved[x]
        except KeyError:
            raise KeyError(f"{x}: resolved axes are known once the axes pass is done; Rule.axes reads "
                           "ctx.raw_axes(x)") from None

    def atoms(self, x) -> tuple:
        """Every atom of ``x``'s resolved axes, in order."""
        return tuple(a for axis in self.axes(x) for a in axis)

    def resolve(self, axis):
        return self.table.resolve(axis)

    def unify(self, a, b) -> bool:
        """Make two descriptions of one axis agree (False where they cannot)."""
        try:
            return self.table.unify(a, b)
        except RefineError:
            return False

    def fresh(self, node: fx.Node):
        """Opaque atoms for every axis of ``node`` (for a tuple, of every item)."""
        shape = self.shape(node)
        if shape is not None:
            return [self.table.axis(s, ("opaque", node.name), "other") for s in shape]
        items = self.item_shapes(node)
        if items is not None:
            return [[self.table.axis(s, ("opaque", node.name), "other") for s in sh] if sh is not None else None
                    for sh in items]
        return None

    def fresh_like(self, node: fx.Node, i: int):
        """Opaque atoms for item ``i`` of a tuple-valued ``node``."""
        items = self.item_shapes(node)
        sh = items[i] if items else None
        return [self.table.axis(s, ("opaque", node.name), "other") for s in sh] if sh is not None else None

    # -- what rules record in the axes pass, and read back later ------------------------------
    def record_kernels(self, node, kernels: list) -> None:
        """A convolution's kernel-tap atoms per spatial axis (its ``linearize`` reads them)."""
        self.state.axes.kernels[node] = kernels

    def record_position_mixing(self, node) -> None:
        self.state.axes.mixes_positions.add(node)

    def record_regroups(self, node, regroups: list) -> None:
        """Axes a reshape regroups across atom boundaries (its ``linearize`` builds 0/1 maps)."""
        self.state.axes.regroups[node] = regroups

    def kernels(self, node):
        """A convolution's kernel-tap atoms, as its rule recorded them in the axes pass."""
        return self.state.axes.kernels.get(node)

    def regroups(self, node):
        """The axes a reshape regroups, as its rule recorded them in the axes pass."""
        return self.state.axes.regroups.get(node)

    # -- factors for ``linearize`` --------------------------------------------------------------
    def value(self, x) -> NodeValue:
        return NodeValue(x)

    def const_factor(self, x) -> Factor:
        if isinstance(x, fx.Node):
            return Factor(NodeValue(x), tuple(self.axes(x)))
        return self.scalar(float(x))

    def scalar(self, v: float) -> Factor:
        return Factor(self.constant(("scalar", v), lambda: torch.tensor(v, dtype=torch.float64), "scalar"), ())

    def _shared(self, key, build) -> Constant:
        c = self._constants.get(key)
        if c is None:
            c = self._constants[key] = build()
        return c

    def constant(self, key, make, name: str) -> Constant:
        """A constant made once per ``key`` (equal constants are one object, so shared)."""
        return self._shared(key, lambda: Constant(make(), name))

    def taps(self, n_out: int, k: int, n_in: int, stride: int, pad: int, dilation: int) -> Taps:
        geometry = (n_out, k, n_in, stride, pad, dilation)
        return self._shared(("conv_taps",) + geometry, lambda: Taps(*geometry))

    def window(self, n_out: int, k: int, n_in: int, scale: float) -> Window:
        return self._shared(("window", n_out, k, n_in, scale), lambda: Window(n_out, k, n_in, scale))

    def onehots(self, axis, index: int) -> list:
        out = []
        for a in reversed(tuple(axis)):
            i = index % a.size
            index //= a.size
            oh = self._shared(("onehot", a.size, i), lambda a=a, i=i: OneHot(a.size, i))
            out.append(Factor(oh, ((In(a),),)))
        return out[::-1]

    def ones(self, atom) -> Factor:
        c = self.constant(("ones", atom.size), lambda: torch.ones(atom.size, dtype=torch.float64), "ones")
        return Factor(c, ((In(atom),),))

    def derived(self, fn, args: tuple, name: str) -> Derived:
        return Derived(fn, tuple(args), name)

    def derived_factor(self, fn, x, name: str) -> Factor:
        return Factor(Derived(fn, (NodeValue(x),), name), tuple(self.axes(x)))

    def stats(self, node) -> NormStats:
        return NormStats(node)

    # -- errors ------------------------------------------------------------------------------------
    def unsupported(self, node, why: str) -> UnsupportedOpError:
        """The error to raise for an op the decomposition must pass through but cannot."""
        return unsupported(self.state.stream, node, why)

