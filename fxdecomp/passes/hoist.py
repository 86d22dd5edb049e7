"""Pass 14: hoist the products of weights alone out of the per-batch code.

Codegen writes every factor of a term as it comes, so a term whose weights meet before any
image-dependent value (an output projection times a norm's centring matrix) recomputes that
product for every batch. This pass finds the decomposition's nodes that read only weights and
constants, and replaces the largest of them by the outputs of one ``WeightProducts`` call
(``fxdecomp/weight_products.py``), which computes them once, in float64, and keeps them until a
weight changes. The model's own forward is left as traced; a product that is only a view of a
weight (a reshape, a selected row) stays in place, as it costs nothing.
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx

from ..core.state import CompileState
from ..weight_products import WeightProducts

SUBMODULE = "_fxd_weight_products"


def run(state: CompileState) -> CompileState:
    """Rewrites ``forward``; fills ``hoisted``."""
    state.hoisted = hoist_weight_products(state.forward, state.model_nodes)
    return state


def hoist_weight_products(gm: fx.GraphModule, forward: frozenset) -> int:
    """Move the image-independent products of ``gm``'s decomposition (nodes not in ``forward``,
    the model's own forward) into a ``WeightProducts`` submodule; returns how many products moved."""
    g = gm.graph
    fixed = _image_independent(g)
    roots = [n for n in g.nodes if n in fixed and n.op == "call_function" and n not in forward
             and any(u not in fixed for u in n.users)]
    views = _views_of_weights(gm, roots)
    roots = [r for r in roots if r not in views]
    if not roots:
        return 0
    needed = _ancestors(roots)
    leaves = [n for n in g.nodes if n in needed and n.op == "get_attr"]
    sub, env = fx.Graph(), {}
    for leaf in leaves:
        env[leaf] = sub.placeholder(leaf.name)
    for n in g.nodes:
        if n in needed and n.op != "get_attr":
            env[n] = sub.node_copy(n, lambda a: env[a])
    sub.output(tuple(env[r] for r in roots))
    gm.add_submodule(SUBMODULE, WeightProducts(sub))

    moving = set(leaves)
    first = next(n for n in g.nodes if n not in moving)
    for leaf in leaves:  # get_attr reads nothing: read them all first (as codegen places constants), then call once
        first.prepend(leaf)
    with g.inserting_after(leaves[-1]):
        call = g.call_module(SUBMODULE, tuple(leaves))
    anchor = call
    for i, r in enumerate(roots):
        with g.inserting_after(anchor):
            anchor = g.call_function(operator.getitem, (call, i), name=f"weights_{r.name}")
        r.replace_all_uses_with(anchor)
    for n in reversed(list(g.nodes)):  # the decomposition's copies of them are now unused
        if n in needed and n.op == "call_function" and n not in forward and not n.users:
            g.erase_node(n)
    g.lint()
    gm.recompile()
    return len(roots)


def _image_independent(g: fx.Graph) -> set:
    """Nodes computed from weights and constants alone, by ops without side effects or randomness."""
    fixed: set = set()
    for n in g.nodes:
        if n.op == "get_attr":
            fixed.add(n)
        elif (n.op == "call_function" and n.all_input_nodes and all(a in fixed for a in n.all_input_nodes)
              and _pure(n.target)):
            fixed.add(n)
    return fixed


def _pure(target) -> bool:
    if isinstance(target, torch._ops.OpOverload):
        return not target._schema.is_mutable and torch.Tag.nondeterministic_seeded not in target.tags
    return True  # the decomposition's own kernels: the ones that write in place take the contributions buffer


def _ancestors(roots) -> set:
    seen, todo = set(), list(roots)
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(n.all_input_nodes)
    return seen


def _views_of_weights(gm: fx.GraphModule, roots: list) -> set:
    """The roots whose value only re-indexes a weight (it shares that weight's memory).

    Evaluated once on the current weights, each intermediate freed after its last use, as the
    generated code frees them."""
    nodes = _ancestors(roots)
    order = [n for n in gm.graph.nodes if n in nodes]
    last = {a: i for i, n in enumerate(order) for a in n.all_input_nodes}
    wanted, weights, views, env = set(roots), set(), set(), {}
    with torch.no_grad():
        for i, n in enumerate(order):
            if n.op == "get_attr":
                env[n] = _fetch(gm, n.target)
                if isinstance(env[n], torch.Tensor):
                    weights.add(env[n].untyped_storage().data_ptr())
            else:
                env[n] = n.target(*fx.node.map_arg(n.args, env.__getitem__),
                                  **fx.node.map_arg(n.kwargs, env.__getitem__))
            if n in wanted:
                v = env[n]
                if not isinstance(v, torch.Tensor) or v.untyped_storage().data_ptr() in weights:
                    views.add(n)
            for a in n.all_input_nodes:
                if last[a] == i:
                    del env[a]
            if n not in last:
                del env[n]
    return views


def _fetch(gm: fx.GraphModule, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj
