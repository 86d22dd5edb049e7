"""Pass 9: write the output as a sum of component terms.

Walks back from the output along the route the route pass chose, giving no terms to what
the demand pass found dead. Linear ops pass every term through (adding their factors); a residual join is just
an add, so the skip's terms and the branch's terms meet there. A walk into a
branch stops at

* the values of an attention-weighted sum (or any product of two varying
  operands): the carried operand is the branch's *leaf*, the frozen operand
  becomes a factor, and its contracted and shared atoms are where the branch
  may be split into source tokens and heads (unless the carried operand is
  affine in the stream, as in an attention pooling: then the product is a
  frozen linear readout and the walk goes through it);
* a nonlinear op, whose output is the leaf;
* a norm that starts the branch (its input is the stream, and its output feeds
  nonlinear computation): the norm's output is the leaf.

Norms on the stream, and norms after the nonlinearity inside a branch's tail,
are frozen-affine. A nonlinear op *on* the stream makes everything before it one
(collapsed) component — unless nothing but the stream's own ops lies before it
(a CNN stem), where that is simply the embedding; with ``linearize`` an
elementwise one is written ``f(x) = x · (f(x)/x)`` with its gate frozen instead.
Constants met on the way become bias components.
"""
from __future__ import annotations

import operator
import sys
from contextlib import contextmanager

import networkx as nx
import torch
import torch.fx as fx

from .. import kernels
from ..core.atoms import AtomTable
from ..core.context import RuleContext
from ..core.ir import CONST, ComponentSpec, PARAM, is_varying
from ..core.state import CompileState
from ..core.step import Step
from ..core.terms import Derived, Factor, NodeValue, PartialSum, Piece, Term, resolve_in
from ..core.where import describe, module_of, param_name, unsupported
from ..errors import UnsupportedOpError
from .route import RESIDUAL_JOINS, moving


def _nonzero_at_zero(node: fx.Node) -> bool:
    """Whether the op gives something other than 0 for an input of 0 (True when unsure)."""
    args = [torch.zeros(1, dtype=torch.float64) if isinstance(a, fx.Node) else a for a in node.args]
    if any(isinstance(a, (fx.Node, list, tuple)) for a in node.kwargs.values()):
        return True
    try:
        value = node.target(*args, **node.kwargs)
    except Exception:  # an op that cannot run on a stand-in: keep the offset
        return True
    return not isinstance(value, torch.Tensor) or bool((value != 0).any())


_ZEROS = (torch.ops.aten.zeros_like.default, torch.ops.aten.new_zeros.default, torch.ops.aten.zeros.default)


def _known_zero(f: Factor) -> bool:
    """A constant made by ``zeros``/``zeros_like`` (padding a concatenation): no bias to list."""
    return isinstance(f.source, NodeValue) and f.source.node.target in _ZEROS


#: terms of one component at a stream node beyond which they are summed there (``_collect``).
#: One: a component that reaches a stream node by two paths (a MobileOne block's convolution
#: and its identity, a reparameterisable conv's large and small kernels) is summed there, so
#: the dense maps after it are applied once, not once per path. At 4, MobileCLIP-S1's
#: decomposed forward was 7.6x the model's (its 1x1 downsampling convolutions met every
#: component twice); at 1, 4.0x, and no model measured got slower (ViTs, Swin, ConvNeXt,
#: ResNet, LeViT, EfficientFormer, PoolFormer, RepViT within timing noise).
MAX_TERMS = 1


def run(state: CompileState) -> CompileState:
    """Fills ``terms``, ``specs``, ``joins``, ``linearised`` and ``collapses``."""
    expander = Expander(state)
    state.terms, state.specs = expander.run()
    state.joins = expander.joins()
    state.linearised = expander.linearised
    state.collapses = expander.notes + expander.hidden_collapses()
    return state


@contextmanager
def _deep_enough(graph: fx.Graph):
    """Room for the walk's recursion: it goes one node deeper per op along the stream, three
    frames each, so a plain chain (MobileOne, linearised) or a few hundred residual blocks
    pass Python's default limit of 1,000 frames. Python 3.11 runs these calls without growing
    the C stack, so the limit can follow the graph's size."""
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(max(before, 4 * len(graph.nodes) + 1000))
    try:
        yield
    finally:
        sys.setrecursionlimit(before)


class Expander:
    """The walk: every node's terms, memoised, from the output back."""

    def __init__(self, state: CompileState):
        self.gm, self.flow, self.inp, self.stream = state.gm, state.flow, state.inp, state.stream
        self.aff, self.axes, self.out = state.affinity, state.axes, state.out
        self.route, self.demand = state.route, state.demand
        self.table: AtomTable = self.axes.table
        self.state = state
        self.linearised: list[str] = []
        #: one sentence per collapse: where, and whether linearize=True would avoid it
        self.notes: list[str] = []
        self.ctx = RuleContext(state)
        self.memo: dict = {}
        self.components: list[ComponentSpec] = []
        self.order = {n: i for i, n in enumerate(self.gm.graph.nodes)}

    # -- public ------------------------------------------------------------------------
    def run(self) -> tuple[list[Term], list[ComponentSpec]]:
        with _deep_enough(self.gm.graph):
            terms = self.terms(self.out)
        self.components.sort(key=lambda c: (c.order, c.id))
        for i, c in enumerate(self.components):
            c.id = i
        return terms, self.components

    def joins(self) -> frozenset:
        """The nodes where the walk met terms of more than one component (where a branch's
        tail ends, for labels)."""
        return frozenset(n for n, ts in self.memo.items() if len({t.component.id for t in ts}) > 1)

    def hidden_collapses(self) -> list[str]:
        """One sentence per stretch of the stream that no term passes through, though branches
        come before it: everything computed there reaches the output only inside the leaves
        of later branches (every path from it is nonlinear, as at Hiera's stage changes without
        ``linearize``). A collapse the walk made itself (a nonlinear op on the stream, a stem)
        is not counted again; nor is a stream that only a class-token readout leaves unread
        (the route goes through it, the demand pass finds it dead)."""
        g, stream, route = self.stream.graph, self.stream, self.route
        reached, todo = {self.out}, [self.out]
        while todo:
            n = todo.pop()
            if not route.through.get(n, n is self.out):
                continue
            for a in self.aff.inputs(n):
                if a in g and a not in reached:
                    reached.add(a)
                    todo.append(a)
        stops = [i for i, n in enumerate(stream.nodes)
                 if route.stem.get(n) or (n in route.why_not and not route.through.get(n))]
        first = max(stops, default=-1) + 1
        notes, i = [], len(stream.nodes) - 1
        while i >= first:
            h = stream.nodes[i]
            if h in reached or all(a in stream for a in nx.ancestors(g, h)):
                i -= 1
                continue
            notes.append(self._hidden_note(h, i))
            while i >= first and stream.nodes[i] not in reached:
                i -= 1  # one note per unreached stretch, at its last node
        return notes

    def _hidden_note(self, h: fx.Node, i: int) -> str:
        """The note for the unread stream node ``h`` (position ``i``); the leaves of its segment
        that are not attention-weighted sums (a nonlinear op carrying the stream on) become
        'collapsed' components: they hold what the stream held."""
        leaves = [c for c in self.components if c.category == "branch" and self.stream.segment.get(c.node) == i]
        for c in leaves:
            if c.mixing is None:
                c.category = "collapsed"
        names = ", ".join(dict.fromkeys(self._leaf_name(c.node) for c in leaves)) or "later branches"
        note = (f"the residual stream at {describe(h)} reaches the output only through {names}, computed from "
                "its actual values with no skip path around them: every component before it is inside them "
                "(collapsed, not listed).")
        chosen = [c for c in leaves if c.node in self.aff.selections]
        if chosen:
            where = ", ".join(self._leaf_name(c.node) for c in chosen)
            return note + (f" Pass linearize=True to decompose through {where} with its selection frozen (the "
                           "element the max picks, at the actual input).")
        return note + " No option decomposes through it yet."

    def terms(self, node: fx.Node) -> list[Term]:
        hit = self.memo.get(node)
        if hit is None:
            hit = [] if self.demand.dead(node) else self._expand(node)
            if node in self.stream:
                hit = self._collect(node, hit)
            elif self._ends_branch(node):
                hit = self._read_back(node, hit)
            self.memo[node] = hit
        return hit

    def _collect(self, node: fx.Node, terms: list[Term]) -> list[Term]:
        """A component with more than ``MAX_TERMS`` terms at a stream node continues as one term:
        their sum at this node, materialised (``PartialSum``). Without it, parallel linear
        paths on the stream multiply the terms — their planning, and every later op's cost —
        at every block. A component that may be split by head or token keeps its terms (their
        slicing atoms must stay free)."""
        by_comp: dict = {}
        for t in terms:
            by_comp.setdefault(t.component.id, []).append(t)
        if all(len(ts) <= MAX_TERMS for ts in by_comp.values()):
            return terms
        out: list[Term] = []
        axes = tuple(self.ctx.axes(node))
        for ts in by_comp.values():
            comp = ts[0].component
            if len(ts) <= MAX_TERMS or comp.slicing:
                out.extend(ts)
            else:
                out.append(Term(comp, (Factor(PartialSum(node, tuple(ts)), axes),)))
        return out

    def _ends_branch(self, node: fx.Node) -> bool:
        """Whether ``node`` is a branch's output where it joins the stream."""
        return any(u in self.stream and u.target in RESIDUAL_JOINS for u in node.users)

    def _read_back(self, node: fx.Node, terms: list[Term]) -> list[Term]:
        """A branch that is one whole component at its output (an MLP, a bottleneck; not
        split by head, token or neuron) reads its contribution there from the model's own
        value, less the branch's bias terms, instead of recomputing its tail from the leaf:
        the tail's last layer (an MLP's ``fc2``, a ConvFFN's second 1x1) would otherwise be
        computed twice, once by the model and once for the component. Not with a readout:
        there the tail's weights meet the readout's few columns first (cheap), where the
        value read back would be a full-width tensor per branch; nor at neuron granularity,
        whose split needs the tail's last layer in the terms."""
        if self.state.granularity == "neuron" or self.state.readout is not None:
            return terms
        own = [t for t in terms if t.component.category != "bias"]
        if len({t.component.id for t in own}) != 1:
            return terms
        comp = own[0].component
        if comp.slicing or (len(own) == 1 and len(own[0].factors) == 1):  # split, or already one value
            return terms
        biases = tuple(t for t in terms if t.component is not comp)
        axes = tuple(self.ctx.axes(node))
        value = NodeValue(node)
        if biases:
            value = Derived(kernels.less, (value, PartialSum(node, biases)), f"less_bias_{node.name}")
        return [Term(comp, (Factor(value, axes),))] + list(biases)

    # -- the walk ------------------------------------------------------------------------
    def _expand(self, node: fx.Node) -> list[Term]:
        if node is self.inp:
            comp = self._new("embed", node, leaf=node)
            return [self._leaf_term(comp, node)]
        if self.flow.get(node) in (CONST, PARAM):
            comp = self._new("bias", node, label=param_name(node) or module_of(node) or node.name)
            return [self._leaf_term(comp, node)]
        if node.op != "call_function":
            raise self.unsupported(node, "it is not a function call")
        rule = self.aff.rule(node)
        if rule is None:
            raise self.unsupported(node, None)
        step = self._step_of(node, rule)
        through = self.route.through[node]
        if step == Step.LINEAR:
            self._linear_branches_are_leaves(node)
            if node in self.aff.selections:
                self.linearised.append(self._leaf_name(node).replace("'", ""))
            return self._through(node, rule)
        if step == Step.NORM:
            if through:
                return self._through(node, rule)
            return [self._leaf_term(self._new("branch", node, leaf=node), node)]
        if step == Step.MIXING:
            carried = self.route.carried[node]
            if through:
                return self._through(node, rule, carried)
            return self._leaf_mixing(node, rule, carried)
        if node not in self.stream:
            return [self._leaf_term(self._new("branch", node, leaf=node), node)]
        if self.route.stem[node]:
            return [self._leaf_term(self._new("embed", node, leaf=node), node)]
        if through:
            return self._gated(node)
        self.notes.append(self._collapse_note(node, self.route.why_not[node]))
        return [self._leaf_term(self._new("collapsed", node, leaf=node), node)]

    def _collapse_note(self, node, why_not: str | None) -> str:
        """What collapsed, and whether ``linearize=True`` would avoid it."""
        note = (f"the residual stream passes through a nonlinear op at {describe(node)}: everything "
                "computed before it is one 'collapsed' component.")
        if node in self.aff.selections:
            return note + (" Pass linearize=True to decompose through it with its selection frozen (the "
                           "element it picks, at the actual input).")
        if why_not is None:
            return note + (" Pass linearize=True to decompose through it with its gate frozen "
                           "(f(x) = x · (f(x)/x) at the actual input).")
        return note + (f" linearize=True cannot avoid this: {why_not}, so it is not an elementwise op "
                       "that can be written x · (f(x)/x).")

    def _leaf_name(self, node) -> str:
        """``'module' (op)`` for a note (a ``getitem`` named after the op whose item it reads)."""
        src = node.args[0] if node.target is operator.getitem else node
        return f"'{module_of(node) or src.name}' ({self._selected_op(node)})"

    def _selected_op(self, node) -> str:
        """The op a selection node reads (a ``getitem`` reads its producer's values)."""
        src = node.args[0] if node.target is operator.getitem else node
        return getattr(src.target, "__name__", str(src.target)).split(".")[0]

    def _step_of(self, node, rule) -> Step:
        return self.aff.step.get(node) or rule.classify(node, lambda x: is_varying(self.flow, x))

    def _moving(self, node) -> list:
        return moving(self.state, node)

    def _linear_branches_are_leaves(self, node) -> None:
        """At a residual join ``x + b(x)`` whose branch ``b`` is affine in the stream once norms
        are frozen (ResMLP's token mixing is one linear layer; PoolFormer's is
        ``pool(norm(x)) - norm(x)``), the branch is still a component of its own: its output is
        the leaf. Walking through it would double every earlier component's terms at each
        such block. A concatenation is no join: what it puts beside the stream (open_clip
        ResNet's mean token before its attention pool) is walked like the stream itself."""
        if node not in self.stream or node.target not in RESIDUAL_JOINS:
            return
        moving = self._moving(node)
        if len(moving) < 2 or not any(a in self.stream for a in moving):
            return
        for a in moving:
            if a not in self.stream and a not in self.memo and self.aff.frozen_affine.get(a, False):
                self.memo[a] = [self._leaf_term(self._new("branch", a, leaf=a), a)]

    def _gated(self, node) -> list[Term]:
        """``f(x) = x · g`` with ``g = f(x)/x`` frozen (plus ``f`` at x = 0 when that is not 0)."""
        x = self._moving(node)[0]
        atoms = frozenset(self.ctx.atoms(x))
        axes = tuple(self.ctx.axes(node))
        gate = Derived(kernels.gate, (NodeValue(node), NodeValue(x)), f"gate_{node.name}")
        g = Factor(gate, axes)
        out = [self._apply(t, Piece(arg=x, factors=[g], passthrough=atoms), atoms, node)[0] for t in self.terms(x)]
        op = getattr(node.target, "__name__", str(node.target)).split(".")[0]
        mod = module_of(node)
        self.linearised.append(f"{mod or node.name} ({op})")
        if _nonzero_at_zero(node):
            off = Factor(Derived(kernels.gate_offset, (NodeValue(node), NodeValue(x), gate), f"offset_{node.name}"),
                         axes)
            comp = self._new("bias", node, label=f"{mod or node.name}.{op}(0)")
            out.append(self._apply(Term(comp, (off,)), Piece(const=off, passthrough=atoms), atoms, node)[0])
        return out

    def _through(self, node, rule, carried=None) -> list[Term]:
        lin = rule.linearize(node, self.ctx, carried)
        out: list[Term] = []
        for piece in lin.pieces:
            if piece.arg is not None:
                if self.demand.dead_edge(node, piece.arg):
                    continue  # the output never reads this operand's part of the result
                for t in self.terms(piece.arg):
                    out.append(self._apply(t, piece, self.ctx.atoms(piece.arg), node)[0])
            elif not _known_zero(piece.const):
                comp = self._new("bias", node, label=piece.label or self._bias_label(node))
                t = Term(comp, (piece.const,))
                out.append(self._apply(t, piece, piece.const.atoms, node)[0])
        return out

    def _leaf_mixing(self, node, rule, carried) -> list[Term]:
        lin = rule.linearize(node, self.ctx, carried)
        comp = self._new("branch", node, leaf=carried, mixing=node)
        out: list[Term] = []
        for piece in lin.pieces:
            if piece.arg is carried:
                term, rename = self._apply(self._leaf_term(comp, carried), piece, self.ctx.atoms(carried), node)
                if piece.split:
                    comp.slicing = {k: tuple(resolve_in((v,), rename)[0]) for k, v in piece.split.items()}
                term.renamed = {}  # the split is named after this rename
                out.append(self._leaf_term(comp, node) if self._reads_own_value(node, lin, comp) else term)
            elif piece.arg is None:
                bias = self._new("bias", node, label=piece.label or self._bias_label(node))
                out.append(self._apply(Term(bias, (piece.const,)), piece, piece.const.atoms, node)[0])
            else:
                raise self.unsupported(node, "it is linear in more than one varying operand at once")
        return out

    def _reads_own_value(self, node, lin, comp) -> bool:
        """Whether a mixing leaf's term is the node's own value.

        The frozen weights applied to the carried operand's actual value are the node's
        value (an attention's output, per head, before its heads are merged). Unless the
        component is split by source token (token granularity), its term is that value, and
        the weights (a ``[B, heads, T, T]`` tensor, remade and contracted at every layer) are
        never formed."""
        if self.state.granularity == "token" or len(lin.pieces) != 1 or lin.pieces[0].coef != 1.0:
            return False
        own = set(self.ctx.atoms(node))
        return all(a in own for k, atoms in comp.slicing.items() if k != "token" for a in atoms)

    def _apply(self, term: Term, piece: Piece, in_atoms, node) -> tuple[Term, dict]:
        """Apply one piece's linear map to a term, renaming atoms that would clash."""
        out_atoms = set(self.ctx.atoms(node))
        keep = set(piece.passthrough)
        contracted = set(in_atoms) - keep
        created = out_atoms - keep
        need = (contracted & out_atoms) | (created & term.atom_set)
        rename = {a: self.table.alias(a, node.name) for a in need}
        factors = tuple(f.rename(rename) for f in term.factors)
        factors += tuple(Factor(f.source, resolve_in(f.axes, rename)) for f in piece.factors)
        renamed = {a: rename.get(b, b) for a, b in term.renamed.items()}
        for a, b in rename.items():
            if a not in term.renamed.values():
                renamed.setdefault(a, b)
        return Term(term.component, factors, term.coef * piece.coef, renamed), rename

    # -- components -------------------------------------------------------------------------
    def _leaf_term(self, comp: ComponentSpec, node: fx.Node) -> Term:
        return Term(comp, (Factor(NodeValue(node), tuple(self.ctx.axes(node))),))

    def _new(self, category: str, node: fx.Node, leaf=None, mixing=None, label=None) -> ComponentSpec:
        c = ComponentSpec(id=len(self.components), category=category, node=node, leaf=leaf, mixing=mixing, label=label,
                          order=self.order[mixing or leaf or node])
        self.components.append(c)
        return c

    def _bias_label(self, node) -> str:
        mod = module_of(node)
        op = getattr(node.target, "__name__", str(node.target)).split(".")[0]
        return f"{mod}.{op}" if mod else op

    def unsupported(self, node: fx.Node, why: str | None) -> UnsupportedOpError:
        return unsupported(self.stream, node, why)
