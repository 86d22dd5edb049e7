"""Pass 4: label every axis of every tensor with atoms.

Runs each op's rule forward over the graph. The image gives the batch atom and
its pixel rows and columns; parameters get atoms of their own, tied to the
activations they meet by unification. At the end every axis is resolved to its
finest atoms (``Axes.resolved``; ``Axes.raw`` keeps them as the rules gave them).

Nothing here fails quietly. An op with no rule gets opaque atoms (it may lie in
a branch, where nothing needs to be followed through it). A rule that meets a
known limit (``RefineError``: a split of the batch axis; ``NotImplementedError``)
leaves a note, which the compiler reports. Any other exception, or axes that
do not fit the output, is a bug in the rule and raises :class:`RuleError`.
"""
from __future__ import annotations

import torch.fx as fx

from ..core.atoms import AtomTable, RefineError, axis_size
from ..core.ir import Axes
from ..core.state import CompileState
from ..errors import RuleError
from ..rules.registry import rule_for
from .dataflow import SHAPE
from .shapes import item_shapes, shape_of
from .where import describe, op_ref

#: ops that only reshape, view or cast their first argument
PASS_THROUGH = {"view", "reshape", "expand", "to", "_to_copy", "clone", "unsqueeze", "squeeze",
                 "permute", "alias", "detach", "contiguous", "_unsafe_view", "lift_fresh_copy", "t"}


def param_name(node) -> str | None:
    """Qualified parameter name behind a value that only reshapes or casts a parameter."""
    seen = 0
    while isinstance(node, fx.Node) and seen < 16:
        if node.op == "get_attr":
            return str(node.target)
        if node.op != "call_function" or not node.args:
            return None
        name = getattr(node.target, "__name__", "").split(".")[0]
        if name not in PASS_THROUGH:
            return None
        node = node.args[0]
        seen += 1
    return None


def run(state: CompileState) -> CompileState:
    """Fills ``axes``."""
    state.axes = AxisAnalysis(state.gm, state.flow).run()
    return state


class AxisAnalysis:
    """The pass, and the context handed to ``Rule.axes``."""

    def __init__(self, gm: fx.GraphModule, flow: dict):
        self.gm = gm
        self.flow = flow
        self.table = AtomTable()
        self.result = Axes(self.table)
        self.notes = self.result.notes

    # what rules record besides atoms ---------------------------------------------------
    def record_kernels(self, node, kernels: list) -> None:
        """A convolution's kernel-tap atoms per spatial axis (its ``linearize`` reads them)."""
        self.result.kernels[node] = kernels

    def record_position_mixing(self, node) -> None:
        self.result.mixes_positions.add(node)

    def record_regroups(self, node, regroups: list) -> None:
        """Axes a reshape regroups across atom boundaries (its ``linearize`` builds 0/1 maps)."""
        self.result.regroups[node] = regroups

    # helpers used by rules ---------------------------------------------------------
    def shape(self, x):
        return shape_of(x)

    def axes(self, x):
        return self.result.raw.get(x) if isinstance(x, fx.Node) else None

    def unify(self, a, b) -> bool:
        try:
            return self.table.unify(a, b)
        except RefineError:
            return False

    def fresh(self, node: fx.Node):
        shape = shape_of(node)
        if shape is not None:
            return [self.table.axis(s, ("opaque", node.name), "other") for s in shape]
        items = item_shapes(node)
        if items is not None:
            return [[self.table.axis(s, ("opaque", node.name), "other") for s in sh] if sh is not None else None
                    for sh in items]
        return None

    def fresh_like(self, node: fx.Node, i: int):
        items = item_shapes(node)
        sh = items[i] if items else None
        return [self.table.axis(s, ("opaque", node.name), "other") for s in sh] if sh is not None else None

    def param_name(self, x) -> str | None:
        return param_name(x)

    # the pass -------------------------------------------------------------------------
    def run(self) -> Axes:
        raw, resolved = self.result.raw, self.result.resolved
        for node in self.gm.graph.nodes:
            raw[node] = self._axes_of(node)
        for node in self.gm.graph.nodes:
            resolved[node] = self._resolve(raw[node])
        return self.result

    def _axes_of(self, node: fx.Node):
        if node.op == "placeholder":
            return self._input_axes(node)
        if node.op == "get_attr":
            shape = shape_of(node)
            if shape is None:
                return None
            return [self.table.axis(s, ("param", str(node.target), i), "other") for i, s in enumerate(shape)]
        if node.op != "call_function" or self.flow.get(node) == SHAPE:
            return None
        rule = rule_for(node.target)
        if rule is None:
            return self.fresh(node)
        try:
            out = rule.axes(node, self)
        except (RefineError, NotImplementedError) as err:
            self.notes.append(f"{describe(node)}: {err or type(err).__name__}; its heads and tokens are not "
                              "followed through it, so splits behind it may be coarser.")
            return self.fresh(node)
        except Exception as err:
            raise self._rule_bug(node, rule, f"raised {type(err).__name__}: {err}") from err
        if not self._fits(node, out):
            raise self._rule_bug(node, rule, f"gave axes {out!r} that do not fit the output's shape "
                                             f"{shape_of(node) or item_shapes(node)}")
        return out

    @staticmethod
    def _rule_bug(node, rule, what: str) -> RuleError:
        tname = op_ref(node.target)
        return RuleError(
            f"{describe(node)}: its rule {type(rule).__module__}.{type(rule).__name__} {what} while "
            f"labelling axes. This is a bug in the rule, not in the model: fix the rule's axes(), or "
            f"replace it with fxdecomp.register_rule({tname}, MyRule()).")

    def _input_axes(self, node):
        shape = shape_of(node)
        if shape is None:
            return None
        b = self.table.new(shape[0], ("batch",), "batch") if shape[0] > 1 else None
        self.table.batch = b
        axes = [(b,) if b is not None else ()]
        names = {1: ("channel", "channel")}
        if len(shape) == 4:
            names.update({2: ("row", "spatial"), 3: ("col", "spatial")})
        for i in range(1, len(shape)):
            key, role = names.get(i, (f"dim{i}", "other"))
            axes.append(self.table.axis(shape[i], ("image", key), role))
        return axes

    def _fits(self, node, out) -> bool:
        shape = shape_of(node)
        if shape is not None:
            return isinstance(out, list) and len(out) == len(shape) and all(
                isinstance(a, tuple) and self._size_ok(a, s) for a, s in zip(out, shape))
        items = item_shapes(node)
        if items is not None:
            if not isinstance(out, list) or len(out) != len(items):
                return False
            return all(sh is None or (isinstance(o, list) and len(o) == len(sh) and all(
                self._size_ok(a, s) for a, s in zip(o, sh))) for o, sh in zip(out, items))
        return out is None

    def _size_ok(self, axis, size: int) -> bool:
        """An axis fits a dimension of ``size`` (an empty dimension has no atoms, like size 1)."""
        return axis_size(self.table.resolve(axis)) == size or (size == 0 and not axis)

    def _resolve(self, ax):
        if ax is None:
            return None
        if ax and isinstance(ax[0], list) or (ax and ax[0] is None):
            return [self._resolve(x) for x in ax]
        return [self.table.resolve(a) for a in ax]
