"""What the passes hand each other: one type per pass result (see ``core/state.py``).

Each pass fills one of these into the compile state; later passes only read them. They live
here, below the passes, so that a pass reads another's result without importing that pass.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import torch
import torch.fx as fx

from .atoms import AtomTable

#: the value classes of the dataflow pass (``CompileState.flow``): the image, parameters,
#: constants computed from them, shape arithmetic, and values that depend on the image
INPUT, PARAM, CONST, SHAPE, VARYING = "input", "param", "const", "shape", "varying"


def is_varying(flow: dict, x) -> bool:
    """Whether ``x`` is a node whose value depends on the image's values."""
    return isinstance(x, fx.Node) and flow.get(x) in (INPUT, VARYING)


@dataclass
class Axes:
    """Pass 4 (axes): every node's atoms, and what rules recorded besides."""

    table: AtomTable
    #: node -> its axes as its rule gave them (atoms refined or unified later are not resolved)
    raw: dict = field(default_factory=dict)
    #: node -> its axes, each resolved to its finest atoms (what every later pass reads)
    resolved: dict = field(default_factory=dict)
    #: convolution (or unfold) node -> per spatial axis, the atoms of its kernel taps (None: none)
    kernels: dict = field(default_factory=dict)
    #: nodes that mix positions without taps of their own (pooling)
    mixes_positions: set = field(default_factory=set)
    #: reshape node -> [(input atoms, output atoms)] it regroups across atom boundaries
    regroups: dict = field(default_factory=dict)
    #: known limits met (an op whose axes could not be followed), one sentence each
    notes: list = field(default_factory=list)

    def of(self, node) -> list | None:
        """``node``'s resolved axes (None for a node with no tensor value)."""
        return self.resolved.get(node)

    def atoms(self, node) -> tuple:
        """Every atom of ``node``'s resolved axes, in order."""
        return tuple(a for axis in self.resolved[node] for a in axis)

    def mixes(self, node) -> bool:
        """Whether ``node`` mixes positions (a branch holding one is of kind ``conv``)."""
        kernels = self.kernels.get(node)
        return bool(kernels and any(k for k in kernels)) or node in self.mixes_positions


@dataclass
class Stream:
    """Pass 5 (stream): the residual stream and the segments between its nodes."""

    nodes: list                      # stream nodes, input first, output last
    index: dict                      # stream node -> position
    segment: dict = field(default_factory=dict)  # varying node -> index of the stream node starting its segment
    graph: nx.DiGraph | None = None  # varying nodes that reach the output

    def __contains__(self, node) -> bool:
        return node in self.index


@dataclass
class Affinity:
    """Pass 6 (affinity): how each node inside a segment depends on the segment's start."""

    affine: dict
    depth: dict
    linear_reach: dict
    step: dict
    frozen_affine: dict
    #: node -> the rule the walk uses there: the op's rule, or one read from the symbolic form
    rules: dict = field(default_factory=dict)
    #: rules read from the symbolic form, standing in for the op rules at these nodes
    symbolic: dict = field(default_factory=dict)
    #: nodes that select one element (a max over an axis): linear with ``linearize=True``
    selections: set = field(default_factory=set)

    def rule(self, node: fx.Node):
        """The rule the walk uses at ``node``."""
        return self.rules.get(node)

    def inputs(self, node: fx.Node) -> list:
        """The values ``node`` is a function of, for the walk: its operands, or for a node
        answered symbolically, the values that enter its run of pointwise ops."""
        hit = self.symbolic.get(node)
        return hit.inputs() if hit is not None else list(node.all_input_nodes)


@dataclass
class Route:
    """Pass 7 (route): how the expand pass's walk treats each node that reaches the output."""

    #: node -> whether the walk carries its inputs' terms through it (else its value is a leaf)
    through: dict
    #: product of several varying operands -> the one the walk carries (the others are frozen)
    carried: dict
    #: nonlinear node on the stream -> whether only the stream's own ops come before it (a stem)
    stem: dict
    #: nonlinear node on the stream, not a stem -> why it cannot be a frozen gate (None: it can)
    why_not: dict


@dataclass
class Demand:
    """Pass 8 (demand): which parts of each value the output reads. ``need``: node -> per axis, the
    set of indices read (None: all of them), or None for a dead node; ``edges``: (user, arg)
    -> what ``user`` reads of ``arg``, or None."""

    need: dict
    edges: dict

    def dead(self, node: fx.Node) -> bool:
        return self.need.get(node, "unknown") is None

    def dead_edge(self, user: fx.Node, arg: fx.Node) -> bool:
        # an edge not analysed (a getitem reaching through a split to its input) is live
        return self.edges.get((user, arg), "unknown") is None


@dataclass
class ComponentSpec:
    """A component as found by the expand pass's walk (labels are added by the labels pass)."""

    id: int
    category: str                   # embed | bias | branch | collapsed
    node: fx.Node                   # where it was found (leaf, or op adding the constant)
    leaf: fx.Node | None = None
    mixing: fx.Node | None = None   # the attention-weighted sum that defines its slicing
    slicing: dict = field(default_factory=dict)  # the slicing atoms: {head, window, token, neuron: atoms}
    label: str | None = None
    order: int = 0


@dataclass
class BaseLabel:
    """The labels pass's name for one component, before it is split by head or token."""

    name: str
    kind: str
    module: str
    module_type: str
    layer: int | None
    branch: int


@dataclass
class Group:
    """One found component and the slots [start, start + count) its pieces occupy (granularity)."""

    spec: ComponentSpec
    label: BaseLabel
    slicing: tuple                  # the slicing atoms chosen at this granularity (of ``spec.slicing``)
    start: int
    count: int


@dataclass
class Target:
    """Where one group's pieces are written (pass 13, grouping): ``count`` slots from ``start``, one
    per index of ``keep`` (the group's slicing atoms that stay free); its ``summed`` slicing atoms are
    summed at compile time. ``index``: when those slots are not consecutive, the slot of each index
    of ``keep`` (row-major), the group's pieces then being added there."""

    start: int
    count: int
    keep: tuple
    summed: tuple = ()
    index: tuple | None = None


@dataclass
class Readout:
    """Pass 14 (readout): the matrix every term ends with, so contributions are [B, C, K].

    ``matrix`` is [M, prod(out), K]: one map shared by every component (M = 1), or one per
    component group; ``rows[g]`` says which of them group ``g`` reads: ``(m, None)`` one map,
    ``(m, atom)`` consecutive maps from ``m``, one per index of that slicing atom (a head's tokens
    read through their head's map)."""

    matrix: torch.Tensor
    out_shape: tuple
    atoms: tuple                       # the K axis's atom (none when K == 1)
    rows: list = field(default_factory=list)

    @property
    def k(self) -> int:
        return int(self.matrix.shape[-1])
