"""The compile state: what ``decompose`` was asked, and what each pass found.

A pass is a function ``run(state) -> state`` (as a pass of ``torch.fx.passes.infra`` takes a
graph module and returns a ``PassResult``): it reads the fields earlier passes filled and fills
its own, listed below under its name. Nothing else carries data between passes, so what a pass
needs is visible in the fields it reads.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch
import torch.fx as fx

from .ir import Affinity, Axes, Demand, Readout, Route, Stream

if TYPE_CHECKING:
    from ..components import ComponentTable


@dataclass
class CompileState:
    # -- what to compile (set by ``decompose``) ---------------------------------------------
    model: torch.nn.Module
    example: torch.Tensor
    granularity: str
    layers: set | None
    linearize: bool
    plan_batch: int
    dtype: torch.dtype
    device: torch.device
    model_name: str
    #: what to read the output through (``decompose(readout=...)``): [*out, K], [prod(out), K], or
    #: per component a mapping from names to such matrices; None for the output itself
    readout: object = None
    #: a grouping of ``Decomposition.group`` summed at compile time (None: every component kept)
    group: object = None

    # -- trace ---------------------------------------------------------------------------------
    gm: fx.GraphModule | None = None
    #: whether the batch axis was exported as dynamic (else the module takes the example's size)
    dynamic: bool = True
    # -- dataflow ------------------------------------------------------------------------------
    #: node -> value class (INPUT, PARAM, CONST, SHAPE, VARYING; see ``passes/dataflow.py``)
    flow: dict = field(default_factory=dict)
    inp: fx.Node | None = None
    # -- axes ----------------------------------------------------------------------------------
    axes: Axes | None = None
    # -- stream ----------------------------------------------------------------------------------
    out: fx.Node | None = None            # the value decomposed: the graph's one output
    stream: Stream | None = None
    # -- affinity --------------------------------------------------------------------------------
    affinity: Affinity | None = None
    # -- route -----------------------------------------------------------------------------------
    route: Route | None = None
    # -- demand ----------------------------------------------------------------------------------
    demand: Demand | None = None
    # -- expand ----------------------------------------------------------------------------------
    terms: list = field(default_factory=list)        # every component's terms
    specs: list = field(default_factory=list)        # ComponentSpec, by id
    #: nodes where the walk met terms of more than one component (where a branch's tail ends)
    joins: frozenset = frozenset()
    linearised: list = field(default_factory=list)   # stream nonlinearities written as frozen gates
    collapses: list = field(default_factory=list)    # one sentence per collapse
    # -- labels ----------------------------------------------------------------------------------
    labels: list = field(default_factory=list)       # BaseLabel, by component id
    # -- granularity -----------------------------------------------------------------------------
    groups: list = field(default_factory=list)       # Group, in slot order
    components: ComponentTable | None = None
    #: one sentence per branch left whole at neuron granularity, and why
    split_notes: list = field(default_factory=list)
    # -- grouping --------------------------------------------------------------------------------
    targets: list = field(default_factory=list)      # Target, by group: where its pieces are written
    # -- readout ---------------------------------------------------------------------------------
    readout_plan: Readout | None = None
    # -- codegen ---------------------------------------------------------------------------------
    forward: fx.GraphModule | None = None            # the decomposing module
    #: the nodes of ``forward`` that are the model's own traced forward (the rest decompose it)
    model_nodes: frozenset = frozenset()
    #: name of the empty buffer of ``forward`` whose dtype is the compute dtype
    dtype_buffer: str = ""
    # -- hoist -----------------------------------------------------------------------------------
    hoisted: int = 0                                 # products of weights moved out of the batch code

    @property
    def notes(self) -> list[str]:
        """Every known limit met, every collapse and every branch left unsplit, one sentence each
        (``dm.notes``)."""
        return list(self.axes.notes if self.axes is not None else ()) + list(self.collapses) + \
            list(self.split_notes)


#: a compiler pass
Pass = Callable[[CompileState], CompileState]


def run_passes(state: CompileState, passes) -> CompileState:
    """Run ``passes`` in order, each on the state the previous one returned."""
    for p in passes:
        state = p(state)
    return state
