"""Where a node comes from, in words: its module path and type, for labels and messages."""
from __future__ import annotations

import torch.fx as fx


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
