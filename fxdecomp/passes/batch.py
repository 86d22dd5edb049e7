"""Pass 10: the output's first axis must be the batch of images; if it is not, say where it was lost.

It runs after the expand pass, so that an op on the stream that no rule covers is named there
first (its output's axes are unknown, which also loses the batch).
"""
from __future__ import annotations

from ..core.ir import is_varying
from torch.utils._pytree import tree_leaves

from ..core.state import CompileState
from ..core.where import describe, op_ref
from ..errors import UnsupportedOpError
from ..rules.registry import rule_for


def run(state: CompileState) -> CompileState:
    """Checks ``out``'s axes; fills nothing."""
    table = state.axes.table
    axes = state.axes.of(state.out)
    if axes and axes[0] and axes[0][0] is table.batch and table.batch is not None:
        return state
    raise UnsupportedOpError(
        "the output's first axis cannot be traced back to the batch of images: " + _where_batch_is_lost(state))


def _has_batch(state: CompileState, node) -> bool:
    """Whether the batch atom is among ``node``'s atoms (those of its items, for a tuple)."""
    axes = state.axes.of(node)
    batch = state.axes.table.batch
    if not isinstance(axes, list) or batch is None:
        return False
    return any(a is batch for a in tree_leaves(axes))


def _where_batch_is_lost(state: CompileState) -> str:
    """The first op (in forward order) whose output lost the batch atom its varying input had."""
    flow = state.flow
    for node in state.gm.graph.nodes:
        if node.op != "call_function" or not is_varying(flow, node) or _has_batch(state, node):
            continue
        if not any(is_varying(flow, a) and _has_batch(state, a) for a in node.all_input_nodes):
            continue
        note = next((n for n in state.axes.notes if n.startswith(describe(node))), None)
        if note is not None:
            return f"the batch is lost at {note}"
        if rule_for(node.target) is None:
            tname = op_ref(node.target)
            return (f"the batch is lost at {describe(node)}, which has no rule, so its output's axes "
                    f"are unknown. Teach it with fxdecomp.register_rule({tname}, MyRule()) (a Rule whose "
                    f"axes() says how its output's axes relate to its input's).")
        return (f"the batch is lost at {describe(node)}: its rule gives its output no batch axis "
                "(the model folds or reduces its batch axis there).")
    return "the output does not have the batch as its first axis."
