"""The packages of fxdecomp import each other in one direction: no cycles, and no layer reaches up.

Every import statement counts, at module level or inside a function: a function-level import that
goes up is the same dependency, only hidden. The graph is built from the source with ``ast``, so
it holds whether or not a module can be imported here.
"""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parent.parent / "fxdecomp"

#: Lower layers first. A unit (a subpackage, or a module directly under fxdecomp/) may import its own
#: layer and the layers below it.
LAYERS: list[set[str]] = [
    {"errors", "hashing", "checks", "atomic", "figure", "kernels", "weight_products", "graphs", "shared_weights",
     "components", "groups", "reconstruction", "peak_memory", "assets", "readout"},
    {"core", "rules", "passes", "adapters", "preprocessing"},
    {"compiler", "module", "decomposition"},
    {"data", "world", "store", "models_registry"},
    {"align"},
    {"heatmaps", "segment", "retrieval", "spurious", "report", "demo"},
    {"commands", "cli", "__main__"},
]

#: Imports that still go up a layer, each with what it is for. The test fails when one is added, and
#: when one is removed without being struck from this list, so the list is always the truth.
KNOWN_UPWARD: dict[tuple[str, str], str] = {}


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _is_module(dotted: str) -> bool:
    rel = Path(*dotted.split(".")[1:])
    return (ROOT / rel).with_suffix(".py").is_file() or (ROOT / rel / "__init__.py").is_file()


def import_graph() -> tuple[nx.DiGraph, dict]:
    """Units of fxdecomp and the imports between them, with where each import is written."""
    g, where = nx.DiGraph(), {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        module = ".".join(rel.parts)
        package = module.removesuffix(".__init__") if rel.name == "__init__" else module.rsplit(".", 1)[0]
        module = module.removesuffix(".__init__")
        g.add_node(unit_of(module))
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                if not base.startswith("fxdecomp"):
                    continue
                # ``from . import x``: x is a unit when it is a module, else an attribute of ``base``
                targets = [f"{base}.{a.name}" if _is_module(f"{base}.{a.name}") else base for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("fxdecomp")]
            else:
                continue
            for target in targets:
                a, b = unit_of(module), unit_of(target)
                if a and b and a != b and b != "__init__":
                    g.add_edge(a, b)
                    where.setdefault((a, b), []).append(f"{rel}.py:{node.lineno}")
    g.remove_nodes_from([n for n in list(g) if n in ("", "__init__")])
    return g, where


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_the_graph_sees_imports_at_every_depth(graph):
    """The checks below would pass on an empty graph: it must hold the edges known to be there,
    function-level ones included (``commands`` imports its applications inside its handlers)."""
    g, where = graph
    assert {"compiler", "store", "align", "commands", "passes"} <= set(g)
    assert g.has_edge("compiler", "passes") and g.has_edge("commands", "segment") and g.has_edge("module", "decomposition")
    assert any(int(w.rsplit(":", 1)[1]) > 30 for w in where[("commands", "segment")])


def test_no_import_cycles_between_packages(graph):
    g, where = graph
    cycles = list(nx.simple_cycles(g))
    described = ["  " + " -> ".join(c + [c[0]]) + "  (" + "; ".join(
        f"{a}->{b} at {where[(a, b)][0]}" for a, b in zip(c, c[1:] + c[:1])) + ")" for c in cycles[:10]]
    assert not cycles, "import cycles between fxdecomp packages:\n" + "\n".join(described)


def test_every_unit_has_a_layer(graph):
    g, _ = graph
    placed = set().union(*LAYERS)
    assert not set(g) - placed, f"give these a layer in LAYERS: {sorted(set(g) - placed)}"
    assert sum(len(layer) for layer in LAYERS) == len(placed), "a unit is in two layers"


def test_no_layer_imports_a_higher_one(graph):
    g, where = graph
    rank = {u: i for i, layer in enumerate(LAYERS) for u in layer}
    upward = {(a, b) for a, b in g.edges if a in rank and b in rank and rank[b] > rank[a]}
    new = sorted(upward - set(KNOWN_UPWARD))
    assert not new, "imports that reach up a layer:\n" + "\n".join(f"  {a} -> {b} at {', '.join(where[(a, b)][:3])}"
                                                                   for a, b in new)
    gone = sorted(set(KNOWN_UPWARD) - upward)
    assert not gone, f"no longer imported, strike from KNOWN_UPWARD: {gone}"
