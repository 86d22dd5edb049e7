"""Pass 11: name components from the graph, not from a per-model table.

A branch is named after the deepest module that holds most of its ops (the
attention module, not the block around it, nor the norm in front of it); its
layer is the position of that module's parent among all branch parents, in
forward order. Kinds come from structure: an attention-weighted sum over
tokens makes ``attn``, a spatial convolution ``conv``, anything else
per-position ``mlp`` (gated MLPs such as SwiGLU, squeeze-excitation included).
"""
from __future__ import annotations

from collections import Counter

from ..core.ir import Axes, BaseLabel, ComponentSpec, Stream
from ..core.state import CompileState
from ..core.where import PASS_THROUGH, module_of, module_type_of


def run(state: CompileState) -> CompileState:
    """Fills ``labels``."""
    state.labels = label(state.specs, state.stream, state.axes, state.joins)
    return state


def _module_types(nodes) -> dict:
    types = {}
    for n in nodes:
        for path, t in (n.meta.get("nn_module_stack") or {}).values():
            t = t if isinstance(t, str) else getattr(t, "__name__", str(t))
            types[path] = t.rsplit(".", 1)[-1]
    return types


MOVES_ONLY = PASS_THROUGH | {"transpose", "flatten", "unflatten", "type_as"}


def _computes(node) -> bool:
    """Whether a node does arithmetic (not a view, a reshape or a cast, of which a module
    written one way has more than the same module written another way)."""
    name = getattr(getattr(node, "target", None), "__name__", "").split(".")[0]
    return node.op == "call_function" and name not in MOVES_ONLY


def majority_module(nodes) -> str:
    """Deepest module path containing more than half of ``nodes`` that compute something."""
    paths = [module_of(n) for n in nodes if _computes(n)]
    if not paths:
        return ""
    counts: Counter = Counter()
    for p in paths:
        parts = p.split(".") if p else []
        for i in range(1, len(parts) + 1):
            counts[".".join(parts[:i])] += 1
    majority = [p for p, c in counts.items() if 2 * c > len(paths)]
    return max(majority, key=lambda p: p.count("."), default="")


def branch_nodes(spec: ComponentSpec, stream: Stream, joins: frozenset = frozenset(),
                 by_segment: dict | None = None, tail: set | None = None) -> set:
    """The ops of a branch: its tail from the leaf down to the first node where other
    components' terms meet it (``joins``, from the expand pass), and every op before it in
    its segment whose values only the branch uses (so not a norm that two parallel
    branches share, nor the stream they read). Where several streams run side by side
    (TNT's pixel and patch streams), one segment holds many blocks; neither bound depends
    on how long the segment is. ``tail``: :func:`branch_tail`, where the caller has it."""
    g = stream.graph
    leaf = spec.leaf
    if leaf is None or leaf not in g or leaf in stream:
        return {spec.node}
    seg = stream.segment[leaf]

    def inside(n) -> bool:
        return n in g and stream.segment.get(n) == seg and n not in stream

    own = set(tail) if tail is not None else branch_tail(spec, stream, joins)
    if by_segment is None:
        by_segment = segments(stream, leaf.graph)
    for n in reversed(by_segment.get(seg, ())):
        if n not in own and inside(n):
            users = [u for u in n.users if u in g]
            if users and all(u in own for u in users):
                own.add(n)
    return own


def branch_tail(spec: ComponentSpec, stream: Stream, joins: frozenset = frozenset()) -> set:
    """The ops of a branch from its leaf down to the first join (its affine tail, and the
    leaf): where the branch's own module is, whatever comes before it (a norm, written as
    many pointwise ops, may hold most of a branch's ops)."""
    g, leaf = stream.graph, spec.leaf
    if leaf is None or leaf not in g or leaf in stream:
        return {spec.node}
    seg = stream.segment[leaf]
    own, todo = {leaf}, [leaf]
    while todo:
        for u in todo.pop().users:
            if u not in own and u in g and stream.segment.get(u) == seg and u not in stream and u not in joins:
                own.add(u)
                todo.append(u)
    return own


def _holds(module: str, nodes) -> bool:
    """Whether ``module`` (or a module inside it) holds one of ``nodes`` that computes."""
    return any(_computes(n) and (module_of(n) == module or module_of(n).startswith(module + ".")) for n in nodes)


def segments(stream: Stream, graph) -> dict:
    """Segment index -> its nodes, in forward order."""
    out: dict = {}
    for n in graph.nodes:
        seg = stream.segment.get(n)
        if seg is not None:
            out.setdefault(seg, []).append(n)
    return out


def label(specs: list[ComponentSpec], stream: Stream, axes: Axes, joins: frozenset = frozenset()) -> list[BaseLabel]:
    """Labels for every component; ``joins`` as for :func:`branch_nodes` (``Expander.joins()``)."""
    labels: list[BaseLabel | None] = [None] * len(specs)
    parents: dict[str, int] = {}
    by_segment = None
    for spec in specs:
        if spec.category not in ("branch", "collapsed"):
            continue
        if by_segment is None:
            by_segment = segments(stream, spec.node.graph)
        tail = branch_tail(spec, stream, joins)
        nodes = branch_nodes(spec, stream, joins, by_segment, tail)
        module = majority_module(nodes) if spec.category == "branch" else module_of(spec.node)
        if spec.category == "branch" and module:
            if not _holds(module, tail):  # the module in front of the branch (its norm), not the branch's
                module = majority_module(tail) or module
        types = _module_types(nodes)
        mtype = types.get(module, module_type_of(spec.node))
        kind = _component_kind(spec, nodes, axes)
        parent = module.rsplit(".", 1)[0] if "." in module else module
        if parent not in parents:
            parents[parent] = len(parents)
        layer = parents[parent]
        name = module or spec.node.name
        labels[spec.id] = BaseLabel(name, kind, module, mtype, layer, spec.id)
    layer_paths = sorted(parents.items(), key=lambda kv: -len(kv[0]))
    for spec in specs:
        if labels[spec.id] is not None:
            continue
        module = module_of(spec.node)
        if spec.category == "embed":
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


def _component_kind(spec: ComponentSpec, nodes, axes: Axes) -> str:
    if spec.category == "collapsed":
        return "collapsed"
    if spec.mixing is not None and spec.slicing.get("token"):
        return "attn"
    if any(axes.mixes(n) for n in nodes):
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
