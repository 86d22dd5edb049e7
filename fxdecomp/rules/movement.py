"""Data movement: reshapes, permutations, selections, slices, concatenation,
rolls and padding. All linear; most only relabel atoms, the rest are 0/1 maps."""
from __future__ import annotations

import operator

import torch
import torch.fx as fx

from ..core.atoms import In, axis_size
from ..core.step import Step
from ..core.terms import Factor, Linearization, Piece
from .base import ALL, Rule, UnaryRule, bound_args, norm_dim
from .registry import rule_for, rules_for

aten = torch.ops.aten


def _ins(axis) -> tuple:
    return tuple(In(a) for a in axis)


def _identity_piece(node, x, ctx) -> Piece:
    atoms = frozenset(ctx.atoms(x))
    if ctx.varying(x):
        return Piece(arg=x, passthrough=atoms)
    return Piece(const=ctx.const_factor(x), passthrough=atoms)


class RelabelRule(UnaryRule):
    """Ops that only rearrange axes: the output's atoms are the input's."""

    step = Step.LINEAR

    def linearize(self, node, ctx, carried=None):
        x = node.args[0]
        if sorted(a.id for a in ctx.atoms(x)) != sorted(a.id for a in ctx.atoms(node)):
            raise ctx.unsupported(
                node, "this reshape regroups elements across axis boundaries that do not line up")
        return Linearization([_identity_piece(node, x, ctx)])


def reshape_groups(in_shape, out_shape) -> list[tuple[range, range]]:
    """The smallest runs of input and output dims that hold the same elements."""
    groups, i, j = [], 0, 0
    while i < len(in_shape) or j < len(out_shape):
        i0, j0 = i, j
        a = in_shape[i] if i < len(in_shape) else 1
        b = out_shape[j] if j < len(out_shape) else 1
        i, j = min(i + 1, len(in_shape)), min(j + 1, len(out_shape))
        while a != b:
            if a < b:
                a *= in_shape[i]
                i += 1
            else:
                b *= out_shape[j]
                j += 1
        while i < len(in_shape) and in_shape[i] == 1 and (j >= len(out_shape) or out_shape[j] != 1):
            i += 1
        while j < len(out_shape) and out_shape[j] == 1 and (i >= len(in_shape) or in_shape[i] != 1):
            j += 1
        groups.append((range(i0, i), range(j0, j)))
    return groups


@rules_for(aten.view, aten.reshape, aten._unsafe_view, aten.flatten, aten.unflatten,
           aten.view_as, aten.reshape_as)
class ReshapeRule(RelabelRule):
    """A reshape only relabels atoms, except where its axis boundaries cut the input's
    atoms across: there the output gets fresh atoms and the map is a 0/1 regrouping."""

    def axes(self, node, ctx):
        src, in_shape, out_shape = ctx.raw_axes(node.args[0]), ctx.shape(node.args[0]), ctx.shape(node)
        out = ctx.table.reshape(src, out_shape)
        if out is not None:
            return out
        out, regroups = [], []
        for ins, outs in reshape_groups(in_shape, out_shape):
            part = ctx.table.reshape([src[i] for i in ins], [out_shape[j] for j in outs])
            if part is None:
                part = ctx.table.regroup([src[i] for i in ins], [out_shape[j] for j in outs])
                regroups.append((tuple(a for i in ins for a in src[i]), tuple(a for p in part for a in p)))
            out.extend(part)
        if regroups:
            ctx.record_regroups(node, regroups)
        return out

    def linearize(self, node, ctx, carried=None):
        regroups = ctx.regroups(node)
        if not regroups:
            return super().linearize(node, ctx)
        x = node.args[0]
        factors, moved = [], set()
        for in_axis, out_axis in regroups:
            i, o = tuple(ctx.resolve(in_axis)), tuple(ctx.resolve(out_axis))
            factors.append(regroup_factor(ctx, node, o, i))
            moved |= set(i)
        atoms = frozenset(ctx.atoms(x)) - moved
        if ctx.varying(x):
            return Linearization([Piece(arg=x, factors=factors, passthrough=atoms)])
        return Linearization([Piece(const=ctx.const_factor(x), factors=factors, passthrough=atoms)])


#: Largest flat size regrouped by an explicit 0/1 matrix (its square is materialised).
MAX_REGROUP = 4096


def regroup_factor(ctx, node, out_axis: tuple, in_axis: tuple) -> Factor:
    """The 0/1 factor taking ``in_axis``'s atoms to ``out_axis``'s (same elements)."""
    n = axis_size(in_axis)
    if n > MAX_REGROUP:
        raise ctx.unsupported(node, f"its axes regroup {n} elements across atom boundaries (at most "
                                    f"{MAX_REGROUP} are regrouped explicitly)")
    sizes = tuple(a.size for a in out_axis) + tuple(a.size for a in in_axis)
    # the identity on the flat index, seen from both splits of it into atoms
    m = ctx.constant(("regroup", len(out_axis), sizes),
                     lambda: torch.eye(n, dtype=torch.float64).reshape(sizes), "regroup")
    return Factor(m, tuple((a,) for a in out_axis) + tuple((In(a),) for a in in_axis))


@rules_for(aten.permute)
class PermuteRule(RelabelRule):
    def axes(self, node, ctx):
        src = ctx.raw_axes(node.args[0])
        return [src[norm_dim(d, len(src))] for d in node.args[1]]



@rules_for(aten.transpose, aten.t, aten.swapaxes)
class TransposeRule(RelabelRule):
    def axes(self, node, ctx):
        src = list(ctx.raw_axes(node.args[0]))
        if len(node.args) < 3:  # t()
            return src[::-1]
        i, j = norm_dim(node.args[1], len(src)), norm_dim(node.args[2], len(src))
        src[i], src[j] = src[j], src[i]
        return src



@rules_for(aten.squeeze, aten.unsqueeze)
class SqueezeRule(RelabelRule):
    """Size-1 axes carry no atoms, so (un)squeezing only drops or adds empty axes."""

    def axes(self, node, ctx):
        src = [axis for axis, s in zip(ctx.raw_axes(node.args[0]), ctx.shape(node.args[0])) if s != 1]
        out, k = [], 0
        for s in ctx.shape(node):
            if s == 1:
                out.append(())
            else:
                out.append(src[k])
                k += 1
        return out



@rules_for(aten.expand, aten.expand_as, aten.broadcast_to)
class ExpandRule(UnaryRule):
    """Broadcasting to a larger shape: new atoms, values constant along them."""

    step = Step.LINEAR

    def axes(self, node, ctx):
        src_axes, src_shape = ctx.raw_axes(node.args[0]), ctx.shape(node.args[0])
        out_shape = ctx.shape(node)
        off = len(out_shape) - len(src_shape)
        out = []
        for j, s in enumerate(out_shape):
            i = j - off
            if i >= 0 and src_shape[i] == s:
                out.append(src_axes[i])
            else:
                out.append(ctx.table.axis(s, ("broadcast", node.name), "other"))
        return out

    def linearize(self, node, ctx, carried=None):
        return Linearization([_identity_piece(node, node.args[0], ctx)])


@rules_for(aten.select)
class SelectRule(UnaryRule):
    """``x[..., i, ...]``: a one-hot factor, applied by indexing at code generation."""

    step = Step.LINEAR

    def axes(self, node, ctx):
        src = list(ctx.raw_axes(node.args[0]))
        del src[norm_dim(node.args[1], len(src))]
        return src

    def reads(self, node, arg, need, ctx):
        """One index of the selected axis."""
        shape = ctx.shape(arg)
        dim = node.args[1] % len(shape)
        idx = node.args[2] % shape[dim]
        return need[:dim] + (frozenset([idx]),) + need[dim:]

    def linearize(self, node, ctx, carried=None):
        x, dim, idx = node.args[0], node.args[1], node.args[2]
        shape = ctx.shape(x)
        dim = norm_dim(dim, len(shape))
        idx = idx + shape[dim] if idx < 0 else idx
        piece = _identity_piece(node, x, ctx)
        axis = ctx.axes(x)[dim]
        piece.passthrough = frozenset(piece.passthrough) - set(axis)
        piece.factors = ctx.onehots(axis, idx)
        return Linearization([piece])


def _slice_factor(ctx, in_axis, out_axis, size: int, start: int, stop: int, step: int) -> Factor:
    """0/1 map from an axis of ``size`` to its elements start:stop:step."""
    n = len(range(start, stop, step))

    def make():
        m = torch.zeros(n, size, dtype=torch.float64)
        m[torch.arange(n), torch.arange(start, stop, step)] = 1
        return m

    mat = ctx.constant(("slice", size, start, stop, step), make, f"slice{start}_{stop}_{step}")
    return Factor(mat, (out_axis, _ins(in_axis)))


def _slice_bounds(size: int, start, end, step) -> tuple[int, int, int]:
    start, end, step = (0 if start is None else start), (size if end is None else end), step or 1
    start = max(start + size, 0) if start < 0 else min(start, size)
    end = max(end + size, 0) if end < 0 else min(end, size)
    return start, max(end, start), step


@rules_for(aten.slice)
class SliceRule(UnaryRule):
    step = Step.LINEAR

    def _bounds(self, node, shape):
        a = bound_args(node)
        dim = norm_dim(a["dim"], len(shape))
        return (dim, *_slice_bounds(shape[dim], a["start"], a["end"], a["step"]))

    def axes(self, node, ctx):
        src = list(ctx.raw_axes(node.args[0]))
        shape = ctx.shape(node.args[0])
        dim, start, end, step = self._bounds(node, shape)
        n = len(range(start, end, step))
        if n == shape[dim]:
            return src
        src[dim] = ctx.table.axis(n, ("slice", src[dim], start, step), "other")
        ctx.table.promote(src[dim], dominant_role(ctx.table, ctx.raw_axes(node.args[0])[dim]))
        return src

    def reads(self, node, arg, need, ctx):
        """The indices of the sliced axis that the output's needed indices are (None: none)."""
        dim, start, end, step = self._bounds(node, ctx.shape(arg))
        picked = range(start, end, step)
        want = need[dim]
        idx = frozenset(picked) if want is ALL else frozenset(picked[j] for j in want if j < len(picked))
        if not idx:
            return None
        return need[:dim] + (idx,) + need[dim + 1:]

    def linearize(self, node, ctx, carried=None):
        x = node.args[0]
        shape = ctx.shape(x)
        dim, start, end, step = self._bounds(node, shape)
        piece = _identity_piece(node, x, ctx)
        n = len(range(start, end, step))
        if n == shape[dim]:
            return Linearization([piece])
        in_axis = ctx.axes(x)[dim]
        piece.passthrough = frozenset(piece.passthrough) - set(in_axis)
        piece.factors = [_slice_factor(ctx, in_axis, ctx.axes(node)[dim], shape[dim], start, end, step)]
        return Linearization([piece])


def dominant_role(table, axis) -> str:
    """The role an axis made of several atoms takes on: batch over spatial over channel over other."""
    roles = [table.find(a).role for a in axis]
    for r in ("batch", "spatial", "channel"):
        if r in roles:
            return r
    return "other"


def _segment(t, dim: int, seg, ctx) -> tuple:
    """What one input of a concatenation is along its axis, for provenance: (axis, size, name),
    or, for a single row sliced from a larger axis (``x[:, 0:1]``, which has no atom of its
    own), (that axis, 1, None, the row's index on it)."""
    size = ctx.shape(t)[dim]
    if not seg and size == 1 and isinstance(t, fx.Node) and getattr(t.target, "overloadpacket", None) is aten.slice:
        a = bound_args(t)
        src = a["input"]
        shape = ctx.shape(src)
        if shape is not None and len(shape) == len(ctx.shape(t)) and norm_dim(a["dim"], len(shape)) == dim:
            start = _slice_bounds(shape[dim], a["start"], a["end"], 1)[0]
            return (ctx.raw_axes(src)[dim], 1, None, start)
    return (seg, size, ctx.param_name(t))


@rules_for(aten.cat, aten.concat, aten.concatenate)
class CatRule(Rule):
    """Concatenation: each input is embedded into its segment of a new axis."""

    step = Step.LINEAR

    def axes(self, node, ctx):
        a = bound_args(node)
        tensors, dim = list(a["tensors"]), a["dim"]
        out_shape = ctx.shape(node)
        dim = norm_dim(dim, len(out_shape))
        out = None
        segments = []
        for t in tensors:
            t_axes = list(ctx.raw_axes(t))
            seg = t_axes[dim]
            segments.append(_segment(t, dim, seg, ctx))
            if out is None:
                out = t_axes
            else:
                for i, a in enumerate(t_axes):
                    if i != dim and not ctx.unify(out[i], a):
                        return ctx.fresh(node)
        out = list(out)
        if out_shape[dim] == 1:
            out[dim] = ()
        else:
            out[dim] = (ctx.table.new(out_shape[dim], ("cat", tuple(segments)), "other"),)
            for seg, *_ in segments:
                ctx.table.promote(out[dim], dominant_role(ctx.table, seg) if seg else "other")
        return out

    def carriable(self, node):
        return [t for t in node.args[0] if isinstance(t, fx.Node)]

    def reads(self, node, arg, need, ctx):
        """Each input reads only the part of the concatenated axis it fills (None: none of it)."""
        dim = bound_args(node)["dim"] % len(ctx.shape(node))
        want = need[dim]
        offset, found = 0, set()
        for p in node.args[0]:
            size = ctx.shape(p)[dim] if isinstance(p, fx.Node) and ctx.shape(p) is not None else 0
            if p is arg:
                if want is ALL:
                    found = ALL
                    break
                found |= {j - offset for j in want if offset <= j < offset + size}
            offset += size
        if found is not ALL and not found:
            return None
        return need[:dim] + (found if found is ALL else frozenset(found),) + need[dim + 1:]

    def linearize(self, node, ctx, carried=None):
        a = bound_args(node)
        tensors, shape = a["tensors"], ctx.shape(node)
        dim = norm_dim(a["dim"], len(shape))
        out_axis = ctx.axes(node)[dim]
        total = shape[dim]
        pieces, start = [], 0
        for t in tensors:
            n = ctx.shape(t)[dim]
            piece = _identity_piece(node, t, ctx)
            in_axis = ctx.axes(t)[dim]
            s0 = start

            def make(s0=s0, n=n):
                m = torch.zeros(total, n, dtype=torch.float64)
                m[torch.arange(s0, s0 + n), torch.arange(n)] = 1
                return m

            mat = ctx.constant(("embed", total, s0, n), make, f"segment{s0}_{s0 + n}")
            piece.passthrough = frozenset(piece.passthrough) - set(in_axis)
            piece.factors = [Factor(mat, (out_axis, _ins(in_axis)))]
            if piece.const is not None:
                piece.label = ctx.param_name(t)
            pieces.append(piece)
            start += n
        return Linearization(pieces)


@rules_for(aten.stack)
class StackRule(Rule):
    """``stack``: the inputs, each placed at its index of a new axis (a concatenation of
    unsqueezed inputs). Their axes are one; the new axis remembers which input is where."""

    step = Step.LINEAR

    def axes(self, node, ctx):
        a = bound_args(node)
        tensors, out_shape = list(a["tensors"]), ctx.shape(node)
        dim = norm_dim(a["dim"], len(out_shape))
        out = None
        for t in tensors:
            t_axes = list(ctx.raw_axes(t))
            if out is None:
                out = t_axes
            else:
                for a, b in zip(out, t_axes):
                    if not ctx.unify(a, b):
                        return ctx.fresh(node)
        n = len(tensors)
        new = ctx.table.axis(n, ("cat", tuple(((), 1, ctx.param_name(t)) for t in tensors)), "other") \
            if n > 1 else ()
        return out[:dim] + [new] + out[dim:]

    def carriable(self, node):
        return [t for t in node.args[0] if isinstance(t, fx.Node)]

    def linearize(self, node, ctx, carried=None):
        a = bound_args(node)
        tensors, shape = list(a["tensors"]), ctx.shape(node)
        dim = norm_dim(a["dim"], len(shape))
        out_axis, n = ctx.axes(node)[dim], len(tensors)
        pieces = []
        for i, t in enumerate(tensors):
            piece = _identity_piece(node, t, ctx)
            if n > 1:
                def make(i=i):
                    e = torch.zeros(n, dtype=torch.float64)
                    e[i] = 1.0
                    return e

                piece.factors = [Factor(ctx.constant(("stack", n, i), make, f"stack{i}"), (out_axis,))]
            if piece.const is not None:
                piece.label = ctx.param_name(t)
            pieces.append(piece)
        return Linearization(pieces)


@rules_for(aten.roll)
class RollRule(UnaryRule):
    step = Step.LINEAR

    def _spec(self, node, nd):
        a = bound_args(node)
        shifts, dims = a["shifts"], a["dims"]
        shifts = [shifts] if isinstance(shifts, int) else list(shifts)
        dims = [dims] if isinstance(dims, int) else list(dims)
        if not dims:
            raise NotImplementedError("roll without dims (flattened roll)")
        return [(norm_dim(d, nd), s) for d, s in zip(dims, shifts)]

    def axes(self, node, ctx):
        src = list(ctx.raw_axes(node.args[0]))
        shape = ctx.shape(node.args[0])
        try:
            spec = self._spec(node, len(shape))
        except NotImplementedError:
            return ctx.fresh(node)
        for d, s in spec:
            if shape[d] > 1 and s % shape[d]:
                new = ctx.table.axis(shape[d], ("roll", src[d], s % shape[d]), "other")
                ctx.table.promote(new, dominant_role(ctx.table, src[d]))
                src[d] = new
        return src

    def linearize(self, node, ctx, carried=None):
        x = node.args[0]
        shape = ctx.shape(x)
        try:
            spec = self._spec(node, len(shape))
        except NotImplementedError:
            raise ctx.unsupported(node, "roll over a flattened tensor") from None
        piece = _identity_piece(node, x, ctx)
        factors, dropped = [], set()
        for d, s in spec:
            n = shape[d]
            if n == 1 or s % n == 0:
                continue
            s %= n
            in_axis, out_axis = ctx.axes(x)[d], ctx.axes(node)[d]

            def make(n=n, s=s):
                m = torch.zeros(n, n, dtype=torch.float64)
                m[(torch.arange(n) + s) % n, torch.arange(n)] = 1
                return m

            factors.append(Factor(ctx.constant(("roll", n, s), make, f"roll{s}"), (out_axis, _ins(in_axis))))
            dropped |= set(in_axis)
        piece.passthrough = frozenset(piece.passthrough) - dropped
        piece.factors = factors
        return Linearization([piece])


@rules_for(aten.constant_pad_nd, aten.pad)
class PadRule(UnaryRule):
    """Zero padding (``constant_pad_nd``, and ``pad`` in constant mode): an embedding per padded axis."""

    step = Step.LINEAR

    @staticmethod
    def _mode_value(node):
        a = bound_args(node)  # constant_pad_nd has no mode
        return a.get("mode", "constant"), a["value"] or 0

    def _spec(self, node, shape):
        pad = list(node.args[1])
        out = []
        for i in range(len(pad) // 2):
            d = len(shape) - 1 - i
            out.append((d, pad[2 * i], pad[2 * i + 1]))
        return out

    def axes(self, node, ctx):
        src = list(ctx.raw_axes(node.args[0]))
        shape = ctx.shape(node.args[0])
        for d, before, after in self._spec(node, shape):
            if before or after:
                if before < 0 or after < 0:
                    return ctx.fresh(node)
                new = ctx.table.axis(shape[d] + before + after, ("pad", src[d], before), "other")
                ctx.table.promote(new, dominant_role(ctx.table, src[d]))
                src[d] = new
        return src

    def linearize(self, node, ctx, carried=None):
        x = node.args[0]
        mode, value = self._mode_value(node)
        if mode != "constant":
            raise ctx.unsupported(node, f"{mode} padding is not implemented")
        if value:
            raise ctx.unsupported(node, "padding with a non-zero value")
        shape = ctx.shape(x)
        piece = _identity_piece(node, x, ctx)
        factors, dropped = [], set()
        for d, before, after in self._spec(node, shape):
            if not (before or after):
                continue
            if before < 0 or after < 0:
                raise ctx.unsupported(node, "negative padding (cropping)")
            n = shape[d]
            in_axis, out_axis = ctx.axes(x)[d], ctx.axes(node)[d]

            def make(n=n, before=before, after=after):
                m = torch.zeros(n + before + after, n, dtype=torch.float64)
                m[torch.arange(before, before + n), torch.arange(n)] = 1
                return m

            factors.append(Factor(ctx.constant(("pad", n, before, after), make, f"pad{before}_{after}"),
                                  (out_axis, _ins(in_axis))))
            dropped |= set(in_axis)
        piece.passthrough = frozenset(piece.passthrough) - dropped
        piece.factors = factors
        return Linearization([piece])


class TupleRule(UnaryRule):
    """An op returning several tensors; ``getitem`` nodes read them."""

    step = Step.LINEAR

    def item_axes(self, node, i, ctx):
        return self.axes(node, ctx)[i]

    def item_step(self, node, i) -> Step:
        """The step of item ``i`` (a ``getitem`` of it is walked as this)."""
        return self.step

    def item_linearize(self, node, i, item: fx.Node, ctx) -> Linearization:
        raise NotImplementedError


@rules_for(aten.unbind)
class UnbindRule(TupleRule):
    def axes(self, node, ctx):
        src = list(ctx.raw_axes(node.args[0]))
        dim = norm_dim(bound_args(node)["dim"], len(src))
        rest = src[:dim] + src[dim + 1:]
        return [list(rest) for _ in range(ctx.shape(node.args[0])[dim])]

    def item_linearize(self, node, i, item, ctx):
        x = node.args[0]
        dim = norm_dim(bound_args(node)["dim"], len(ctx.shape(x)))
        piece = _identity_piece(item, x, ctx)
        axis = ctx.axes(x)[dim]
        piece.passthrough = frozenset(piece.passthrough) - set(axis)
        piece.factors = ctx.onehots(axis, i)
        return Linearization([piece])


@rules_for(aten.split, aten.split_with_sizes, aten.chunk, aten.tensor_split)
class SplitRule(TupleRule):
    def _bounds(self, node, shape):
        dim = norm_dim(bound_args(node)["dim"], len(shape))
        size = shape[dim]
        spec = node.args[1]  # split_size, split_sizes, chunks, sections: one position, four names
        name = str(node.target)
        if "chunk" in name:
            step = -(-size // spec)
            sizes = [min(step, size - s) for s in range(0, size, step)]
        elif isinstance(spec, int):
            sizes = [min(spec, size - s) for s in range(0, size, spec)]
        else:
            sizes = list(spec)
        out, s0 = [], 0
        for n in sizes:
            out.append((s0, s0 + n))
            s0 += n
        return dim, out

    def axes(self, node, ctx):
        src = list(ctx.raw_axes(node.args[0]))
        shape = ctx.shape(node.args[0])
        dim, bounds = self._bounds(node, shape)
        out = []
        for start, end in bounds:
            axes = list(src)
            if end - start != shape[dim]:
                axes[dim] = ctx.table.axis(end - start, ("slice", src[dim], start, 1), "other")
                ctx.table.promote(axes[dim], dominant_role(ctx.table, src[dim]))
            out.append(axes)
        return out

    def item_linearize(self, node, i, item, ctx):
        x = node.args[0]
        shape = ctx.shape(x)
        dim, bounds = self._bounds(node, shape)
        start, end = bounds[i]
        piece = _identity_piece(item, x, ctx)
        if end - start == shape[dim]:
            return Linearization([piece])
        in_axis = ctx.axes(x)[dim]
        piece.passthrough = frozenset(piece.passthrough) - set(in_axis)
        piece.factors = [_slice_factor(ctx, in_axis, ctx.axes(item)[dim], shape[dim], start, end, 1)]
        return Linearization([piece])


@rules_for(operator.getitem)
class GetItemRule(Rule):
    """Reads one output of a tuple-returning op; behaves as that op says."""

    def _producer(self, node):
        prod = node.args[0]
        if not isinstance(prod, fx.Node):
            return None, None
        return prod, rule_for(prod.target)

    step = Step.LINEAR

    def axes(self, node, ctx):
        prod, _ = self._producer(node)
        items = ctx.raw_axes(prod) if prod is not None else None
        if isinstance(items, list) and items and isinstance(items[0], list):
            return items[node.args[1]]
        return ctx.fresh(node)

    def classify(self, node, varying):
        prod, rule = self._producer(node)
        if not isinstance(rule, TupleRule):
            return Step.NONLINEAR
        step = rule.item_step(prod, node.args[1])
        return step if step in (Step.LINEAR, Step.NORM, Step.SELECTION) else Step.NONLINEAR

    def carriable(self, node):
        prod, rule = self._producer(node)
        return rule.carriable(prod) if isinstance(rule, TupleRule) else []

    def linearize(self, node, ctx, carried=None):
        prod, rule = self._producer(node)
        if not isinstance(rule, TupleRule):
            raise ctx.unsupported(node, "it reads an output of an op with no rule")
        return rule.item_linearize(prod, node.args[1], node, ctx)
