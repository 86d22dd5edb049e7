"""Pass 8: which parts of each value the output actually reads.

Walking back from the output, every varying node gets, per axis, the set of
indices some later op reads (``None``: all of them). ``select`` and ``slice``
narrow the demand, ``cat`` hands each input only its own range, elementwise ops
and norms (on their leading axes) pass it on, anything else reads everything.
Only edges the expand pass walks (the route pass says which: linear ops, norms
it passes through, gated products on the stream) carry demand: a branch's leaf
reads its actual value, not its terms. A value — or one input of a ``cat`` — whose terms nothing reads
is *dead*: the expand pass gives it no terms. Without this, a class-token readout would drag every
patch token's path through the model's late stages (CaiT, XCiT class-attention
blocks write ``cat([cls, patches])`` again and again) and the number of terms
would double at each such place, only to be multiplied by zero at the end.
"""
from __future__ import annotations

import torch
import torch.fx as fx

from ..core.ir import Demand, Stream
from ..core.shape import shape_of
from ..core.state import CompileState
from ..rules.elementwise import AddRule, DivRule, IdentityRule, MulRule, NegRule, UnaryNonlinear
from ..rules.norms import LayerNormRule, RMSNormRule
from ..rules.registry import rule_for

aten = torch.ops.aten
ALL = None  # every index of an axis
_POINTWISE = (AddRule, DivRule, IdentityRule, MulRule, NegRule, UnaryNonlinear)


def run(state: CompileState) -> CompileState:
    """Fills ``demand``."""
    state.demand = analyse_demand(state.gm, state.stream, state.out, state.route.through, state.affinity.inputs)
    return state


def analyse_demand(gm: fx.GraphModule, stream: Stream, out: fx.Node, through: dict, inputs) -> Demand:
    """``through[user]``: whether the walk takes its inputs' terms through ``user`` (the route
    pass); ``inputs(node)``: the values the walk reads at ``node`` (its operands, unless a
    symbolic rule reads a whole run of pointwise ops there)."""
    g = stream.graph
    order = [n for n in gm.graph.nodes if n in g]
    need: dict = {}    # node -> tuple of per-axis index sets, or None when dead
    edges: dict = {}   # (user, arg) -> what the user reads of arg, or None
    readers: dict = {}  # arg -> users with an edge to it
    for node in reversed(order):
        if node is out:
            need[node] = _full(node)
        else:
            need[node] = _union([edges[(u, node)] for u in readers.get(node, ())], node)
        for arg in set(a for a in inputs(node) if a in g):
            if through[node]:
                edges[(node, arg)] = _reads(node, arg, need[node])
                readers.setdefault(arg, []).append(node)
    return Demand(need, edges)


def _full(node):
    shape = shape_of(node)
    return tuple(ALL for _ in shape) if shape is not None else ()


def _union(reads: list, node):
    live = [r for r in reads if r is not None]
    if not live:
        return None
    shape = shape_of(node)
    if shape is None or any(len(r) != len(shape) for r in live):
        return _full(node)
    out = []
    for axis in zip(*live):
        if any(s is ALL for s in axis):
            out.append(ALL)
        else:
            out.append(frozenset().union(*axis))
    return tuple(out)


def _reads(user: fx.Node, arg: fx.Node, need):
    """What ``user`` reads of ``arg`` when ``need`` of ``user`` is read (None: nothing)."""
    if need is None:
        return None
    shape = shape_of(arg)
    if shape is None or shape_of(user) is None or arg not in user.all_input_nodes:
        return _full(arg)
    rule = rule_for(user.target) if user.op == "call_function" else None
    packet = getattr(user.target, "overloadpacket", None)
    if packet is aten.select and user.args[0] is arg:
        dim = user.args[1] % len(shape)
        idx = user.args[2] % shape[dim]
        return need[:dim] + (frozenset([idx]),) + need[dim:]
    if packet is aten.slice and user.args[0] is arg:
        return _slice_reads(user, shape, need)
    if packet in (aten.cat, aten.concat, aten.concatenate):
        return _cat_reads(user, arg, shape, need)
    if isinstance(rule, _POINTWISE):
        return _broadcast_reads(shape, shape_of(user), need)
    if isinstance(rule, (LayerNormRule, RMSNormRule)) and user.args[0] is arg:
        nd = len(user.args[1])
        return need[:-nd] + (ALL,) * nd
    return _full(arg)


def _slice_reads(user, shape, need):
    dim = (user.args[1] if len(user.args) > 1 else 0) % len(shape)
    size = shape[dim]
    start = user.args[2] if len(user.args) > 2 and user.args[2] is not None else 0
    end = user.args[3] if len(user.args) > 3 and user.args[3] is not None else size
    step = user.args[4] if len(user.args) > 4 else 1
    start, end = _clip(start, size), _clip(end, size)
    picked = range(start, end, step)
    want = need[dim]
    idx = frozenset(picked) if want is ALL else frozenset(picked[j] for j in want if j < len(picked))
    if not idx:
        return None
    return need[:dim] + (idx,) + need[dim + 1:]


def _clip(i: int, size: int) -> int:
    i = i + size if i < 0 else i
    return max(0, min(i, size))


def _cat_reads(user, arg, shape, need):
    parts = user.args[0]
    dim = (user.args[1] if len(user.args) > 1 else user.kwargs.get("dim", 0)) % len(shape_of(user))
    want = need[dim]
    offset, found = 0, set()
    for p in parts:
        size = shape_of(p)[dim] if isinstance(p, fx.Node) and shape_of(p) is not None else 0
        if p is arg:
            if want is ALL:
                found = ALL
                break
            found |= {j - offset for j in want if offset <= j < offset + size}
        offset += size
    if found is not ALL and not found:
        return None
    return need[:dim] + (found if found is ALL else frozenset(found),) + need[dim + 1:]


def _broadcast_reads(shape, out_shape, need):
    off = len(out_shape) - len(shape)
    if off < 0 or len(need) != len(out_shape):
        return tuple(ALL for _ in shape)
    return tuple(need[off + i] if s == out_shape[off + i] else ALL for i, s in enumerate(shape))
