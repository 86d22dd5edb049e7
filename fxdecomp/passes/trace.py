"""Pass 1: trace the model into a functional ATen graph with torch.export.

torch.export covers more architectures than symbolic tracing (it runs the real
Python, so shape-dependent code and helper functions are fine), its graphs are
fx graphs, and every node keeps the ``nn_module_stack`` it came from. The batch
axis is exported as dynamic so one compiled module serves any batch size.
When the graph has in-place ops, ``run_decompositions({})`` makes it functional
while keeping high-level ops such as ``linear``, ``layer_norm`` and
``scaled_dot_product_attention`` intact.
"""
from __future__ import annotations

import warnings

import torch
import torch.fx as fx

from ..core.state import CompileState
from ..errors import TraceError

_NOISE = {
    "aten._assert_tensor_metadata.default", "aten._assert_scalar.default",
    "aten.sym_constrain_range_for_size.default", "aten.sym_constrain_range.default",
    "aten._assert_async.msg", "aten._assert_async.default",
}


def _export(model: torch.nn.Module, example: torch.Tensor, dynamic: bool):
    dyn = ({0: torch.export.Dim("batch", min=1)},) if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.export(model, (example,), dynamic_shapes=dyn, strict=False)


def run(state: CompileState) -> CompileState:
    """Fills ``gm`` and ``dynamic``."""
    state.gm, state.dynamic = trace(state.model, state.example)
    return state


def trace(model: torch.nn.Module, example: torch.Tensor) -> tuple[fx.GraphModule, bool]:
    """Return (graph module, batch_is_dynamic)."""
    if model.training:
        raise TraceError(
            f"{type(model).__name__} is in training mode: dropout and batch statistics would make "
            "the decomposition depend on chance and on the batch. Call model.eval() before decompose().")
    dynamic = True
    try:
        ep = _export(model, example, dynamic=True)
    except Exception as first:  # noqa: BLE001 - retried statically, reported below
        dynamic = False
        try:
            ep = _export(model, example, dynamic=False)
        except Exception as err:  # noqa: BLE001
            msg = str(err).strip().splitlines()
            head = "\n".join(msg[:6])
            raise TraceError(
                f"torch.export could not trace {type(model).__name__}:\n{head}\n"
                "Fix: make forward() traceable (no Python branches on tensor values, no .item() or "
                "numpy round-trips; see the torch.export docs), or wrap the model in a module whose "
                "forward(images) returns the single tensor to decompose.") from err
        warnings.warn(
            f"{type(model).__name__} could not be exported with a dynamic batch size "
            f"({str(first).splitlines()[0][:200]}); the compiled module accepts batch size "
            f"{example.shape[0]} only.", stacklevel=3)
    if _mutates(ep.graph_module):
        try:
            ep = ep.run_decompositions({})
        except Exception as err:  # noqa: BLE001
            raise TraceError(f"functionalising the exported graph of {type(model).__name__} failed: {err}") from err
    gm = ep.module()
    _strip(gm)
    return gm, dynamic


def _mutates(gm: fx.GraphModule) -> bool:
    """Whether the graph has in-place ops (e.g. ``relu_``); only then is it functionalised,
    which costs as much as the export itself."""
    for node in gm.graph.nodes:
        schema = getattr(node.target, "_schema", None)
        if node.op == "call_function" and schema is not None and schema.is_mutable:
            return True
    return False


def _strip(gm: fx.GraphModule) -> None:
    """Drop runtime guards and assertions; the compiled module checks its inputs itself."""
    g = gm.graph
    for node in list(g.nodes):
        if node.op == "call_module" and node.target == "_guards_fn":
            g.erase_node(node)
        elif node.op == "call_function" and str(node.target) in _NOISE and not node.users:
            g.erase_node(node)
    g.lint()
    gm.recompile()
