"""Pass 15: generate the decomposing GraphModule.

The generated forward is the traced forward (so every frozen value is the
actual one, computed once) followed by, for each component, the einsums that
contract its terms' factors in the planned order (a convolution's kernel and taps
applied as the convolution itself, ``core/conv_operands.py``), written into one
[B, C, *out] tensor ([B, C, K] with a readout, whose matrix is one more factor of
every term; groups summed at compile time add their pieces into shared slots). LayerNorms whose statistics are needed are swapped for
``native_layer_norm``, which returns them for free (``kernels.layer_norm_rstd`` gives
them the gradient that output lacks, so the decomposing forward differentiates as the
model does).
"""
from __future__ import annotations

import operator
import re
import string
from dataclasses import dataclass
from math import prod

import torch
import torch.fx as fx
from torch.utils._pytree import tree_map

from .. import kernels
from ..core.ir import Axes, Group, Readout, Target
from ..core.conv_operands import ConvOperand, fuse_convolutions
from ..core.planner import Leaf, Pair, leaves_of, plan, subset_key
from ..core.shape import dtype_of
from ..core.state import CompileState
from ..core.terms import (
    AttentionWeights,
    Constant,
    Derived,
    Factor,
    NodeValue,
    NormStats,
    OneHot,
    PartialSum,
    Source,
    Taps,
    Term,
    Window,
)
from ..errors import UnsupportedOpError
from ..rules.base import bound_args

aten = torch.ops.aten
LETTERS = string.ascii_letters


def _slug(text: str) -> str:
    s = re.sub(r"[^0-9a-zA-Z]+", "_", text).strip("_")
    return s[:40] or "c"


def run(state: CompileState) -> CompileState:
    """Fills ``forward``, ``model_nodes`` and ``dtype_buffer``."""
    by_spec: dict = {}
    for t in state.terms:
        by_spec.setdefault(t.component.id, []).append(t)
    groups = state.groups
    cg = CodeGen(state.gm, state.inp, state.out, state.axes, state.dtype, state.device,
                 nominal_batch=state.plan_batch)
    total = len(state.components)
    state.forward = cg.build(groups, by_spec, total, state.targets or None, state.readout_plan,
                             shared_slots=state.group is not None)
    state.model_nodes = frozenset(cg.model_nodes)
    state.dtype_buffer = DTYPE_REF
    return state


class CodeGen:
    """Builds the decomposing GraphModule for a list of component groups."""

    def __init__(self, gm, inp, out_node, axes: Axes, dtype, device, nominal_batch: int = 32):
        self.gm, self.inp, self.out_node, self.dtype = gm, inp, out_node, dtype
        self.axes, self.table = axes, axes.table
        self.device = device
        self.nominal_batch = nominal_batch
        self.graph = fx.Graph()
        self.env: dict = {}
        self.stats: dict = {}
        self.sources: dict = {}
        self.memo: dict = {}
        self.buffers: dict = {}
        self.folded: dict = {}  # constants reshaped/indexed at compile time
        self.plans: dict = {}  # contraction trees by the atoms of a term's operands
        self.dense_convs: dict = {}  # a convolution's dense map, where that is the cheaper one
        self.laid_out: dict = {}  # (node, permutation): a copy of a gate laid out as the terms it multiplies
        self.model_nodes: set[fx.Node] = set()  # the model's own forward in the generated graph

    # -- graph -----------------------------------------------------------------------------------
    def build(self, groups: list[Group], terms_by_spec: dict, n_components: int, targets: list[Target] | None = None,
              readout: Readout | None = None, shared_slots: bool = False) -> fx.GraphModule:
        """The traced forward, then every group's terms written into the contributions: each into
        its target's slots (``targets``: one per group; by default its own slots), through the
        ``readout`` when one is given. ``shared_slots``: groups add into slots other groups write
        too (a grouping summed at compile time), so the contributions start at zero."""
        out_axes = self.axes.of(self.out_node)  # batch first: the batch pass checked it
        rest_axes = tuple(tuple(axis) for axis in out_axes[1:])
        rest_atoms = tuple(a for axis in rest_axes for a in axis)
        targets = targets or [Target(g.start, g.count, tuple(g.slicing)) for g in groups]
        needed_stats = self._needed_stats(terms_by_spec)
        g = self.graph
        for node in self.gm.graph.nodes:
            if node.op == "output":
                continue
            if node in needed_stats:
                a = bound_args(node)
                x, shape, eps = self.env[a["input"]], a["normalized_shape"], a["eps"]
                args = (x, shape) + tuple(self.env[v] if isinstance(v, fx.Node) else v
                                          for v in (a["weight"], a["bias"])) + (eps,)
                nat = g.call_function(aten.native_layer_norm.default, args)
                self.env[node] = g.call_function(operator.getitem, (nat, 0), name=node.name)
                saved = g.call_function(operator.getitem, (nat, 2), name=f"saved_rstd_{node.name}")
                self.stats[node] = g.call_function(kernels.layer_norm_rstd, (saved, x, len(shape), eps),
                                                   name=f"rstd_{node.name}")
            else:
                self.env[node] = g.node_copy(node, lambda n: self.env[n])
        self.model_nodes = set(g.nodes)
        out_val = self.env[self.out_node]
        out_shape = tuple(self.out_node.meta["tensor_meta"].shape[1:])
        written_atoms = rest_atoms
        if readout is not None:
            self.buffers[READOUT] = readout.matrix
            matrix = self.sources[READOUT] = g.get_attr(READOUT)
            out_val = g.call_function(kernels.read_out, (out_val, matrix), name="read_out")
            out_shape, written_atoms = (readout.k,), tuple(readout.atoms)
        new = kernels.new_zeroed_contributions if shared_slots else kernels.new_contributions
        buf = g.call_function(new, (self.env[self.inp], n_components, out_shape, self._dtype_ref()),
                              name="contributions")
        for gi, (grp, tgt) in enumerate(zip(groups, targets)):
            terms = terms_by_spec.get(grp.spec.id, [])
            want = tuple(tgt.keep) + (self.table.batch,) + written_atoms
            view = tuple(-1 if a is self.table.batch else a.size for a in want)
            slug = _slug(grp.label.name)
            scattered = tgt.index is not None
            dest = buf
            if scattered:  # its own slots first, then added where they belong
                dest = g.call_function(kernels.new_contributions,
                                       (self.env[self.inp], tgt.count, out_shape, self._dtype_ref()),
                                       name=f"pieces_{slug}")
            slot = (0 if scattered else tgt.start, tgt.count, view)
            written = shared_slots and not scattered
            for term in terms:
                if readout is not None:
                    term = self._read_through(term, readout, readout.rows[gi], rest_axes)
                term = _summed_over(term, tgt.summed)
                own = tuple(term.renamed.get(a, a) for a in tgt.keep) + want[len(tgt.keep):]
                done = self._emit_term(term, own, dest, slot, written, slug)
                if done is None:
                    continue  # identically zero (e.g. patch tokens seen from the class token)
                dest, written = done, True
            if scattered:
                if written:
                    buf = g.call_function(kernels.add_at_, (buf, self._index(tgt.index), dest), name=f"add_{slug}")
            else:
                buf = dest
                if not written:
                    buf = g.call_function(kernels.zero_, (buf, tgt.start, tgt.count), name=f"zero_{slug}")
        if readout is not None and len(readout.matrix) > 1:  # one map per component: no map of the output
            out_val = g.call_function(kernels.total_of, (buf,), name="read_out_total")
        g.output((out_val, buf))
        _schedule_early(g, self.model_nodes)
        root = self.gm
        for name, t in self.buffers.items():
            root.register_buffer(name, t, persistent=False)
        gm = fx.GraphModule(root, g, class_name="DecomposedForward")
        _constants_as_buffers(gm)
        return gm

    def _read_through(self, term: Term, readout: Readout, rows: tuple, rest_axes: tuple) -> Term:
        """``term`` with the readout's matrix (the group's rows of it) as one more factor."""
        start, head = rows
        sizes = tuple(readout.out_shape) + (readout.k,)
        axes = rest_axes + (tuple(readout.atoms),)
        if head is None:
            src = Derived(kernels.readout_rows, (_Buffer(READOUT), start, 1, sizes), name="readout")
        else:
            src = Derived(kernels.readout_rows, (_Buffer(READOUT), start, head.size, (head.size,) + sizes),
                          name="readout")
            axes = ((term.renamed.get(head, head),),) + axes
        return Term(term.component, term.factors + (Factor(src, axes),), term.coef, renamed=term.renamed)

    def _index(self, index: tuple) -> fx.Node:
        """A constant index of slots (kept as a buffer, so it moves with the module)."""
        name = f"_fxd_slots_{len(self.buffers)}"
        self.buffers[name] = torch.tensor(index, dtype=torch.long, device=self.device)
        return self.graph.get_attr(name)

    def _dtype_ref(self) -> fx.Node:
        """An empty buffer of the compute dtype: the generated code reads the dtype from it, so
        ``dm.to(dtype)`` changes it with every other buffer."""
        if DTYPE_REF not in self.buffers:
            self.buffers[DTYPE_REF] = torch.empty(0, dtype=self.dtype, device=self.device)
            self.sources[DTYPE_REF] = self.graph.get_attr(DTYPE_REF)
        return self.sources[DTYPE_REF]

    def _needed_stats(self, terms_by_spec) -> set:
        out = set()

        def visit(src):
            if isinstance(src, NormStats):
                out.add(src.node)
            elif isinstance(src, Derived):
                for a in src.args:
                    if isinstance(a, Source):
                        visit(a)
            elif isinstance(src, AttentionWeights):
                for a in (src.q, src.k, src.mask):
                    if a is not None:
                        visit(a)
            elif isinstance(src, PartialSum):
                for t in src.terms:
                    for f in t.factors:
                        visit(f.source)

        for terms in terms_by_spec.values():
            for t in terms:
                for f in t.factors:
                    visit(f.source)
        for n in out:
            if n.target != aten.layer_norm.default:
                raise UnsupportedOpError(f"frozen statistics of {n.target} ('{n.name}') are not available")
        return out

    # -- sources ------------------------------------------------------------------------------------
    def materialize(self, src: Source) -> fx.Node:
        hit = self.sources.get(src)
        if hit is not None:
            return hit
        g = self.graph
        if isinstance(src, _Buffer):
            return self.sources[src.name]
        if isinstance(src, NodeValue):
            node = self.env[src.node]
            dt = dtype_of(src.node)
            if dt is not None and dt.is_floating_point and dt != self.dtype:
                node = g.call_function(kernels.as_dtype, (node, self._dtype_ref()))
        elif isinstance(src, Constant):
            name = f"_fxd_{_slug(src.name)}_{len(self.buffers)}"
            self.buffers[name] = src.tensor.to(device=self.device, dtype=self.dtype)
            node = g.get_attr(name)
        elif isinstance(src, NormStats):
            node = self.stats[src.node]
        elif isinstance(src, Derived):
            args = tuple(self._arg(a) for a in src.args)
            node = g.call_function(src.fn, args, name=_slug(src.name))
        elif isinstance(src, PartialSum):
            node = self._partial(src)
        elif isinstance(src, AttentionWeights):
            kw = {"attn_mask": self.materialize(src.mask) if src.mask is not None else None,
                  "scale": src.scale, "is_causal": src.causal, "row": src.row}
            node = g.call_function(kernels.attention_weights, (self.materialize(src.q), self.materialize(src.k)),
                                   kw, name="attn_weights")
        else:
            raise TypeError(f"cannot materialise {src!r}")
        self.sources[src] = node
        return node

    def _arg(self, a):
        """``a`` with every source in it materialised (a Derived's arguments may nest them)."""
        return tree_map(lambda x: self.materialize(x) if isinstance(x, Source) else x, a)

    # -- terms ---------------------------------------------------------------------------------------
    def _atomized(self, f: Factor) -> tuple[Source, tuple]:
        """Return (source, atoms) with exactly one tensor dim per atom."""
        atoms = f.atoms
        if all(len(axis) == 1 for axis in f.axes):
            return f.source, atoms
        if isinstance(f.source, Constant):  # a Taps stays a Taps, geometry included
            sizes = tuple(a.size for a in atoms)
            return self._fold(f.source, ("atomized", sizes), lambda c: c.reshaped(sizes)), atoms
        shape = tuple(-1 if a is self.table.batch else a.size for a in atoms)
        return Derived(kernels.atomize, (f.source, shape), name=f"{f.source.name}_atoms"), atoms

    def _fold(self, const: Constant, how: tuple, fn) -> Constant:
        """``fn(const)``, a new constant made at compile time (shared between terms)."""
        key = (id(const),) + how
        hit = self.folded.get(key)
        if hit is None:
            hit = self.folded[key] = fn(const)
        return hit

    def _select(self, src: Source, atoms: tuple, atom, index: int) -> tuple[Source, tuple]:
        dim = atoms.index(atom)
        rest = atoms[:dim] + atoms[dim + 1:]
        if isinstance(src, Constant):
            return self._fold(src, ("select", dim, index),
                              lambda c: Constant(c.tensor.select(dim, index), c.name)), rest
        if isinstance(src, AttentionWeights) and src.row is None and dim == len(atoms) - 2:
            return AttentionWeights(src.q, src.k, src.mask, src.scale, src.causal, index), rest
        return Derived(torch.select, (src, dim, index), name=f"{src.name}_at{index}"), rest

    def _planned(self, term, want: tuple):
        """(operands, planned tree, wanted atoms the term has, mask of those in ``want``) for
        one term; None if it is identically zero."""
        ops: list[tuple[Source, tuple]] = []
        picks: list[tuple] = []
        for f in term.factors:
            if isinstance(f.source, OneHot):
                picks.append((f.atoms[0], f.source.index))
            else:
                ops.append(self._atomized(f))
        for atom, index in picks:
            ops = [self._select(s, a, atom, index) if atom in a else (s, a) for s, a in ops]
        for s, _ in ops:
            if isinstance(s, Constant) and s.is_zero():
                return None
        sizes = {a: (self.nominal_batch if a is self.table.batch else a.size) for _, atoms in ops for a in atoms}
        present = tuple(a for a in want if a in sizes)
        mask = tuple(a in sizes for a in want)
        fused, convs = fuse_convolutions(ops, set(present), self.table.batch)
        tree = self._plan(fused, convs, present, sizes) if convs else None
        if tree is None:  # no convolution to apply whole, or no order in which each meets its input
            fused, convs = ops, {}
            tree = self._plan(ops, convs, present, sizes)
        return fused, tree, present, mask

    def _plan(self, keys, convs: dict, present: tuple, sizes: dict):
        gathers = {i: a[-1] for i, (s, a) in enumerate(keys) if _gatherable(s, a)}
        # Terms of one head's source tokens differ only in which token they select: same atoms,
        # same plan (its token-free products are shared through the memo).
        shape = (tuple(a for _, a in keys), present, tuple(gathers), tuple(convs))
        if shape not in self.plans:
            fixed = {i for i, (_, a) in enumerate(keys) if self.table.batch not in a}  # weights, constants
            self.plans[shape] = plan([(k, k[1]) for k in keys], present, sizes, self.memo.keys(), gathers,
                                     fixed, convs)
        return self.plans[shape]

    def _partial(self, src: PartialSum) -> fx.Node:
        """A component's terms at a stream node, summed into one tensor with one axis per atom
        of that node."""
        want = self.axes.atoms(src.node)
        shape = tuple(-1 if a is self.table.batch else a.size for a in want)
        slug = _slug(src.name)
        layout, values = [], []
        for term in src.terms:
            planned = self._planned(term, want)
            if planned is None:
                continue
            keys, tree, present, mask = planned
            node, atoms = self._emit_tree(tree, keys, slug)
            if atoms != present:
                node = self._einsum([(node, atoms)], present, slug)
            layout.append((mask, term.coef))
            values.append(node)
        like = self.materialize(NodeValue(src.node))
        return self.graph.call_function(kernels.partial_sum, (like, shape, tuple(layout), *values), name=slug)

    def _emit_term(self, term, want: tuple, buf, slot, accumulate: bool, slug: str):
        """Emit one term into its slot of the contributions; None if it is identically zero."""
        planned = self._planned(term, want)
        if planned is None:
            return None
        keys, tree, present, mask = planned
        start, count, view_shape = slot
        head = (buf, start, count, view_shape, mask)
        if (isinstance(tree, Pair) and self._gather_side(tree, keys) is None and self._conv_side(tree, keys) is None
                and self._window_side(tree, keys) is None and subset_key([keys[i] for i in leaves_of(tree)], tree.atoms) not in self.memo):
            (lnode, latoms) = self._emit_tree(tree.left, keys, slug)
            (rnode, ratoms) = self._emit_tree(tree.right, keys, slug)
            eq = self._equation([latoms, ratoms], present)
            return self.graph.call_function(kernels.contract_into, head + (eq, lnode, rnode),
                                            {"coef": term.coef, "accumulate": accumulate}, name=f"into_{slug}")
        node, atoms = self._emit_tree(tree, keys, slug)
        if atoms != present:
            node = self._einsum([(node, atoms)], present, slug)
        return self.graph.call_function(kernels.write_, head + (node,),
                                        {"coef": term.coef, "accumulate": accumulate}, name=f"write_{slug}")

    def _emit_tree(self, tree, keys, slug: str):
        if isinstance(tree, Leaf):
            src, atoms = keys[tree.index]
            return self.materialize(src), atoms
        key = subset_key([keys[i] for i in leaves_of(tree)], tree.atoms)
        hit = self.memo.get(key)
        if hit is None:
            side = self._gather_side(tree, keys)
            conv = self._conv_side(tree, keys)
            window = self._window_side(tree, keys)
            if side is not None:
                taps, other = side
                hit = self._gather(self._emit_tree(other, keys, slug), keys[taps.index], tree.atoms, slug)
            elif conv is not None:
                op, other = conv
                hit = self._conv(self._emit_tree(other, keys, slug), keys[op.index], tree.atoms, slug)
            elif window is not None:
                win, other = window
                hit = self._window(self._emit_tree(other, keys, slug), keys[win.index], tree.atoms, slug)
            else:
                left = self._emit_tree(tree.left, keys, slug)
                right = self._emit_tree(tree.right, keys, slug)
                hit = (self._einsum([left, right], tree.atoms, slug), tree.atoms)
            self.memo[key] = hit
        return hit

    def _gather_side(self, tree, keys):
        """(taps leaf, other subtree) when one side of ``tree`` is a convolution's taps
        whose input atom is summed here: applied as an index, not as a product."""
        for taps, other in ((tree.left, tree.right), (tree.right, tree.left)):
            if isinstance(taps, Leaf):
                src, atoms = keys[taps.index]
                if (_gatherable(src, atoms) and atoms[-1] not in tree.atoms
                        and atoms[-1] in {a for i in leaves_of(other) for a in keys[i][1]}):
                    return taps, other
        return None

    def _conv_side(self, tree, keys):
        """(convolution leaf, other subtree) when one side of ``tree`` is a :class:`ConvOperand`."""
        for op, other in ((tree.left, tree.right), (tree.right, tree.left)):
            if isinstance(op, Leaf) and isinstance(keys[op.index][0], ConvOperand):
                return op, other
        return None

    def _window_side(self, tree, keys):
        """(window leaf, other subtree) when one side of ``tree`` is a :class:`Window` that maps
        an atom of the other side to its out atom and nothing else changes: a sum per window."""
        if not isinstance(tree, Pair):
            return None
        for win, other in ((tree.left, tree.right), (tree.right, tree.left)):
            if isinstance(win, Leaf) and isinstance(keys[win.index][0], Window) and len(keys[win.index][1]) == 2:
                out_a, in_a = keys[win.index][1]
                held = set(other.atoms) if isinstance(other, Pair) else set(keys[other.index][1])
                if in_a in held and out_a not in held and (held - {in_a}) | {out_a} == set(tree.atoms):
                    return win, other
        return None

    def _window(self, operand, window_key, out_atoms, slug):
        """``operand`` through an average pool's :class:`Window` along one of its atoms."""
        node, atoms = operand
        src, (out_a, in_a) = window_key
        n_out, k, _n_in = src.geometry
        dim = atoms.index(in_a)
        node = self.graph.call_function(kernels.window_sum, (node, dim, n_out, k, src.scale), name=f"pool_{slug}")
        atoms = atoms[:dim] + (out_a,) + atoms[dim + 1:]
        if atoms != tuple(out_atoms):
            node = self._einsum([(node, atoms)], out_atoms, slug)
        return node, tuple(out_atoms)

    def _conv(self, operand, conv_key, out_atoms, slug):
        """``operand`` through a convolution: its atoms the kernel does not hold are folded into
        the batch, those it holds and keeps (a depthwise convolution's channels) are groups."""
        node, atoms = operand
        op, op_atoms = conv_key
        if op.dense:
            dense = self.dense_convs.get(op)
            if dense is None:
                factors = [(self.materialize(op.weight), op.weight_atoms)]
                factors += [(self.materialize(t), t_atoms) for t, t_atoms in op.taps]
                dense = self.dense_convs[op] = self._einsum(factors, op_atoms, slug)  # weights alone: hoisted
            return self._einsum([(node, atoms), (dense, op_atoms)], out_atoms, slug), tuple(out_atoms)
        taps = [t_atoms for _, t_atoms in op.taps]
        tap_atoms = [t for _, t, _ in taps]
        ins = [i for _, _, i in taps]
        rest = [a for a in op.weight_atoms if a not in tap_atoms]
        keep = set(out_atoms)
        groups = [a for a in rest if a in atoms and a in keep]
        summed = [a for a in rest if a in atoms and a not in keep]
        made = [a for a in rest if a not in atoms]
        lead = [a for a in atoms if a not in set(groups) | set(summed) | set(ins)]
        x_perm = tuple(atoms.index(a) for a in lead + groups + summed + ins)
        g, o, c = (prod(a.size for a in part) for part in (groups, made, summed))
        split = o if g > 1 and o > 1 and c == 1 else 1  # depthwise, several outputs per channel
        w_order = made + groups if split > 1 else groups + made
        w_perm = tuple(op.weight_atoms.index(a) for a in w_order + summed + tap_atoms)
        w = self.graph.call_function(kernels.conv_weight, (self.materialize(op.weight), w_perm, g, o, c, len(taps)),
                                     name=f"conv_weight_{slug}")
        geometry = tuple(t.geometry for t, _ in op.taps)
        kept = tuple(a.size for a in groups + made)
        y = self.graph.call_function(kernels.conv_apply, (node, w, x_perm, len(lead), g, geometry, kept, split),
                                     name=f"conv_{slug}")
        y_atoms = tuple(lead + groups + made + [o_ for o_, _, _ in taps])
        if y_atoms != tuple(out_atoms):
            y = self._einsum([(y, y_atoms)], out_atoms, slug)
        return y, tuple(out_atoms)

    def _gather(self, operand, taps_key, out_atoms, slug):
        """``operand`` times a taps tensor S[out, (tap,) in], by gathering along ``in``."""
        node, atoms = operand
        src, t_atoms = taps_key
        n_out, k, _n_in, stride, pad, dil = src.geometry
        dim = atoms.index(t_atoms[-1])
        node = self.graph.call_function(kernels.tap_gather, (node, dim, n_out, k, stride, pad, dil),
                                        name=f"taps_{slug}")
        new = t_atoms[:-1]
        if len(t_atoms) == 2:  # a kernel of size one along this axis: drop its tap dim
            node = self.graph.call_function(torch.squeeze, (node, dim + 1), name=f"taps_{slug}")
        atoms = atoms[:dim] + tuple(new) + atoms[dim + 1:]
        if atoms != tuple(out_atoms):
            node = self._einsum([(node, atoms)], out_atoms, slug)
        return node, tuple(out_atoms)

    def _equation(self, operand_atoms, out_atoms) -> str:
        letters: dict = {}

        def sub(atoms):
            out = ""
            for a in atoms:
                if a not in letters:
                    if len(letters) >= len(LETTERS):
                        raise UnsupportedOpError("a contraction needs more than 52 distinct indices")
                    letters[a] = LETTERS[len(letters)]
                out += letters[a]
            return out

        ins = ",".join(sub(a) for a in operand_atoms)
        return f"{ins}->{sub(out_atoms)}"

    def _elementwise(self, operands, out_atoms: tuple, slug):
        """A product of two tensors over the same atoms (a term times a frozen gate) as a
        multiplication, the operand laid out unlike the result copied into its layout once (and
        shared by every term it multiplies): with one operand strided, the CPU's multiplication is
        several times slower than the copy (ResNet-50's terms, channels last, times each
        bottleneck's gate, channels first). None where it is not such a product."""
        (a, aa), (b, ba) = operands
        if not (len(set(out_atoms)) == len(out_atoms) == len(aa) == len(ba) and set(aa) == set(ba) == set(out_atoms)):
            return None
        if aa != out_atoms and ba != out_atoms:
            return None
        if aa != out_atoms:
            a = self._lay_out(a, aa, out_atoms)
        if ba != out_atoms:
            b = self._lay_out(b, ba, out_atoms)
        return self.graph.call_function(torch.mul, (a, b), name=f"ein_{slug}")

    def _lay_out(self, node, atoms: tuple, out_atoms: tuple):
        perm = tuple(atoms.index(x) for x in out_atoms)
        key = (node, perm)
        hit = self.laid_out.get(key)
        if hit is None:
            view = self.graph.call_function(torch.permute, (node, perm), name=f"{node.name}_perm")
            hit = self.laid_out[key] = self.graph.call_method("contiguous", (view,))
        return hit

    def _einsum(self, operands, out_atoms, slug):
        product = self._elementwise(operands, tuple(out_atoms), slug) if len(operands) == 2 else None
        if product is not None:
            return product
        eq = self._equation([a for _, a in operands], out_atoms)
        return self.graph.call_function(torch.einsum, (eq, *[n for n, _ in operands]), name=f"ein_{slug}")


#: the buffer whose dtype is the compiled module's compute dtype
DTYPE_REF = "_fxd_dtype"
#: the buffer holding the readout matrix [M, prod(out), K] (``dm.set_readout`` writes into it)
READOUT = "_fxd_readout"


@dataclass(frozen=True)
class _Buffer(Source):
    """A buffer of the generated module, read as it is at run time (the readout matrix)."""

    name: str


def _summed_over(term: Term, summed: tuple) -> Term:
    """``term`` scaled for the summed slicing atoms it does not carry: its value is the same for
    every index of such an atom (the slot broadcast it), so their sum is that many times it."""
    n = 1
    for a in summed:
        if term.renamed.get(a, a) not in term.atom_set:
            n *= a.size
    if n == 1:
        return term
    return Term(term.component, term.factors, term.coef * n, renamed=term.renamed)


def _constants_as_buffers(gm: fx.GraphModule) -> None:
    """Tensors the graph reads that are neither parameters nor buffers (constants torch.export
    lifted out of the forward) become non-persistent buffers, so ``.to()``/``.double()``
    convert them too."""
    for node in gm.graph.nodes:
        if node.op != "get_attr":
            continue
        *path, name = str(node.target).split(".")
        owner = gm.get_submodule(".".join(path)) if path else gm
        value = getattr(owner, name, None)
        if (isinstance(value, torch.Tensor) and not isinstance(value, torch.nn.Parameter)
                and name not in owner._buffers):
            delattr(owner, name)
            owner.register_buffer(name, value, persistent=False)


def _gatherable(src, atoms) -> bool:
    """Taps whose atoms are (out, tap, in), or (out, in) for a kernel of size one."""
    if not isinstance(src, Taps):
        return False
    n_out, k = src.geometry[:2]
    return len(atoms) == 3 or (len(atoms) == 2 and k == 1 and n_out > 1)


def _schedule_early(graph: fx.Graph, forward_nodes: set) -> None:
    """Move every decomposition node to just after its last input.

    Leaves such as an MLP's hidden activations are then reduced (e.g. to the
    class-token row) while the forward is still running, so the generated code
    frees them as early as the model's own forward does.
    """
    order = {n: i for i, n in enumerate(graph.nodes)}
    first = next(iter(graph.nodes))
    early = -(10**9)  # constants: increasing orders, all below the forward's
    root: dict = {}
    tail: dict = {}
    for node in list(graph.nodes):
        if node in forward_nodes or node.op == "output":
            continue
        anchors = [root.get(a, a) for a in node.all_input_nodes]
        if not anchors:
            first.prepend(node)  # constants: before everything, in creation order
            early += 1
            order[node] = early
            continue
        anchor = max(anchors, key=order.__getitem__)
        tail.get(anchor, anchor).append(node)
        tail[anchor] = node
        root[node] = anchor
    graph.lint()
