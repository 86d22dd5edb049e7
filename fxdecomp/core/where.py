"""Where a node comes from, in words: its module path and type, the parameter behind it, and
where it lies, for labels and messages."""
from __future__ import annotations

import torch.fx as fx

from ..errors import UnsupportedOpError


def module_of(node: fx.Node) -> str:
    """The path of the innermost module the node was traced in ('' at top level)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return "" if path.startswith("_empty") else path


def module_type_of(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    t = list(stack.values())[-1][1]
    t = t if isinstance(t, str) else getattr(t, "__name__", str(t))
    return t.rsplit(".", 1)[-1]


def describe(node: fx.Node) -> str:
    """``node 'name' (target) in module 'path' (Type)``, for error messages."""
    mod = module_of(node)
    loc = f" in module '{mod}' ({module_type_of(node)})" if mod else ""
    return f"node '{node.name}' ({node.target}){loc}"


def op_ref(target) -> str:
    """How a user names the op in Python (``torch.ops.aten.gelu.default``), for register_rule hints."""
    return f"torch.ops.{target}" if hasattr(target, "overloadpacket") else repr(target)


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


def unsupported(stream, node: fx.Node, why: str | None) -> UnsupportedOpError:
    """The error for an op the decomposition must pass through but cannot: where it lies,
    why (None: no rule says how), and the ``register_rule`` call that would teach it."""
    if stream is None:  # asked before the stream is known (while labelling axes)
        where = "in the model"
    else:
        where = "on the residual stream" if node in stream else "in the linear tail of a residual branch"
    tname = op_ref(node.target)
    if why is None:
        return UnsupportedOpError(
            f"{describe(node)} lies {where}, so the decomposition must pass through "
            f"it, but no rule says how. If it is an elementwise nonlinearity, register it with "
            f"fxdecomp.register_rule({tname}, kind='nonlinear'); if it returns its input unchanged, "
            f"kind='identity'; otherwise subclass fxdecomp.rules.Rule and pass an instance.")
    return UnsupportedOpError(
        f"{describe(node)} lies {where} and cannot be decomposed: {why}. "
        f"Register a rule for {tname} with fxdecomp.register_rule(...) if it should be handled "
        "differently.")
