"""Pass 8: name components from the graph, not from a per-model table.

A branch is named after the deepest module that holds most of its ops (the
attention module, not the block around it, nor the norm in front of it); its
layer is the position of that module's parent among all branch parents, in
forward order. Kinds come from structure: an attention-weighted sum over
tokens makes ``attn``, a spatial convolution ``conv``, anything else
per-position ``mlp`` (gated MLPs such as SwiGLU, squeeze-excitation included).
"""
from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass

import networkx as nx

from ..errors import CollapseWarning
from .expand import ComponentSpec, module_of, module_type_of
from .stream import Stream


@dataclass
class BaseLabel:
    name: str
    kind: str
    module: str
    module_type: str
    layer: int | None
    branch: int


def _module_types(nodes) -> dict:
    types = {}
    for n in nodes:
        for path, t in (n.meta.get("nn_module_stack") or {}).values():
            t = t if isinstance(t, str) else getattr(t, "__name__", str(t))
            types[path] = t.rsplit(".", 1)[-1]
    return types


def majority_module(nodes) -> str:
    """Deepest module path containing more than half of ``nodes``."""
    paths = [module_of(n) for n in nodes if n.op == "call_function"]
    if not paths:
        return ""
    counts: Counter = Counter()
    for p in paths:
        parts = p.split(".") if p else []
        for i in range(1, len(parts) + 1):
            counts[".".join(parts[:i])] += 1
    majority = [p for p, c in counts.items() if 2 * c > len(paths)]
    return max(majority, key=lambda p: p.count("."), default="")


def branch_nodes(spec: ComponentSpec, stream: Stream) -> set:
    g = stream.graph
    leaf = spec.leaf
    if leaf is None or leaf not in g or leaf in stream:
        return {spec.node}
    seg = stream.segment[leaf]
    same = lambda n: stream.segment.get(n) == seg and n not in stream  # noqa: E731
    down = {n for n in nx.descendants(g, leaf) if same(n)} | {leaf}
    up = set()
    for n in down:
        up |= {a for a in nx.ancestors(g, n) if same(a)}
    return down | up


def label(specs: list[ComponentSpec], stream: Stream) -> list[BaseLabel]:
    labels: list[BaseLabel | None] = [None] * len(specs)
    parents: dict[str, int] = {}
    for spec in specs:
        if spec.role not in ("branch", "collapsed"):
            continue
        nodes = branch_nodes(spec, stream)
        module = majority_module(nodes) if spec.role == "branch" else module_of(spec.node)
        types = _module_types(nodes)
        mtype = types.get(module, module_type_of(spec.node))
        kind = _kind(spec, nodes)
        parent = module.rsplit(".", 1)[0] if "." in module else module
        if parent not in parents:
            parents[parent] = len(parents)
        layer = parents[parent]
        name = module or spec.node.name
        if spec.role == "collapsed":
            warnings.warn(
                f"the residual stream passes through a nonlinear op at '{spec.node.name}' "
                f"({spec.node.target}, module '{module_of(spec.node)}'): everything computed before it is "
                "one 'collapsed' component.", CollapseWarning, stacklevel=4)
        labels[spec.id] = BaseLabel(name, kind, module, mtype, layer, spec.id)
    layer_paths = sorted(parents.items(), key=lambda kv: -len(kv[0]))
    for spec in specs:
        if labels[spec.id] is not None:
            continue
        module = module_of(spec.node)
        if spec.role == "embed":
            users = [u for u in spec.node.users if u in stream.graph]
            module = module_of(users[0]) if users else ""
            module = module.rsplit(".", 1)[0] if "." in module else module
            labels[spec.id] = BaseLabel("embed", "embed", module, _module_types(users).get(module, ""), None,
                                        spec.id)
            continue
        layer = None
        for path, idx in layer_paths:
            if path and (module == path or module.startswith(path + ".")):
                layer = idx
                break
        labels[spec.id] = BaseLabel(spec.label or module or spec.node.name, "bias", module,
                                    module_type_of(spec.node), layer, spec.id)
    _dedupe(labels)
    return labels  # type: ignore[return-value]


def _kind(spec: ComponentSpec, nodes) -> str:
    if spec.role == "collapsed":
        return "collapsed"
    if spec.mixing is not None and spec.split.get("token"):
        return "attn"
    for n in nodes:
        kernels = n.meta.get("fxd_conv_kernels")
        if (kernels and any(k for k in kernels)) or n.meta.get("fxd_spatial_mixing"):
            return "conv"
    return "mlp"


def _dedupe(labels: list[BaseLabel]) -> None:
    seen: Counter = Counter()
    for lab in labels:
        seen[lab.name] += 1
    dup = {k for k, v in seen.items() if v > 1}
    count: Counter = Counter()
    for lab in labels:
        if lab.name in dup:
            count[lab.name] += 1
            if count[lab.name] > 1:
                lab.name = f"{lab.name}#{count[lab.name]}"
