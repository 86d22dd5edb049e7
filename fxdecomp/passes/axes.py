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
from torch.utils._pytree import tree_map

from ..core.atoms import AtomTable, RefineError, axis_size
from ..core.context import RuleContext
from ..core.ir import Axes, SHAPE
from ..core.shape import item_shapes, shape_of
from ..core.state import CompileState
from ..core.where import describe, op_ref
from ..errors import RuleError
from ..rules.registry import rule_for


def run(state: CompileState) -> CompileState:
    """Fills ``axes``."""
    state.axes = Axes(AtomTable())
    AxisAnalysis(state).run()
    return state


class AxisAnalysis:
    """Runs every op's ``Rule.axes`` forward over the graph, with one rule context."""

    def __init__(self, state: CompileState):
        self.gm, self.flow = state.gm, state.flow
        self.result = state.axes
        self.table = self.result.table
        self.notes = self.result.notes
        self.ctx = RuleContext(state)

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
            return self.ctx.fresh(node)
        try:
            out = rule.axes(node, self.ctx)
        except (RefineError, NotImplementedError) as err:
            self.notes.append(f"{describe(node)}: {err or type(err).__name__}; its heads and tokens are not "
                              "followed through it, so splits behind it may be coarser.")
            return self.ctx.fresh(node)
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
        """Every axis (a tuple of atoms) resolved to its finest atoms, those of a tuple-valued
        node's items too."""
        return tree_map(lambda axis: None if axis is None else self.table.resolve(axis), ax,
                        is_leaf=lambda x: isinstance(x, tuple))
