"""Contraction order for one term's factors.

Finding the cheapest order is what makes decomposition demand-driven: a
class-token readout selects one row of the attention weights before anything
is multiplied, and the readout's weight matrices are multiplied together (once,
shared by every term) before they meet per-token activations. Small networks
(the usual case) are planned exactly by dynamic programming over subsets;
larger ones (a component carried through many layers) take the cheaper of a
greedy order and the order the walk met the factors in. Intermediates other
terms already computed cost nothing; a convolution's taps cost an index.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from math import prod
from typing import Container, Hashable, Sequence

EXACT_LIMIT = 10


@dataclass(frozen=True)
class Leaf:
    index: int


@dataclass(frozen=True)
class Pair:
    left: "Leaf | Pair"
    right: "Leaf | Pair"
    atoms: tuple  # atoms of the result, in a canonical order


def plan(operands: Sequence[tuple[Hashable, tuple]], output: tuple, size: dict,
         known: Container = frozenset(), gathers: dict | None = None):
    """Return a contraction tree over ``operands`` producing the ``output`` atoms.

    ``operands`` are (key, atoms) pairs; ``known`` holds keys (see
    :func:`subset_key`) of intermediates that are free to reuse. ``gathers`` maps
    an operand's index to the atom it selects from (a convolution's taps): meeting
    such an operand costs an index, not a product over that atom.
    """
    n = len(operands)
    atom_sets = [frozenset(a) for _, a in operands]
    out = frozenset(output)
    gathers = gathers or {}
    if n == 1:
        return Leaf(0)
    full = (1 << n) - 1

    def atoms_of(mask):
        s = set()
        for i in range(n):
            if mask >> i & 1:
                s |= atom_sets[i]
        return s

    @cache
    def result_atoms(mask):
        inside = atoms_of(mask)
        outside = atoms_of(full & ~mask) | out
        return frozenset(a for a in inside if a in outside)

    @cache
    def key(mask):
        return subset_key([operands[i][0] for i in range(n) if mask >> i & 1], result_atoms(mask))

    def cost_of(m1, m2, r1, r2):
        union = r1 | r2
        for m in (m1, m2):
            g = gathers.get(m.bit_length() - 1) if m & (m - 1) == 0 else None
            if g is not None and g not in result_atoms(m1 | m2):
                union = union - {g}
        return prod(size[a] for a in union)

    if n <= EXACT_LIMIT:
        best: dict[int, tuple[float, object]] = {}
        res: dict[int, frozenset] = {}
        masks = sorted(range(1, full + 1), key=lambda m: bin(m).count("1"))
        for m in masks:
            res[m] = result_atoms(m)
            if m & (m - 1) == 0:
                best[m] = (0.0, Leaf(m.bit_length() - 1))
                continue
            choice = None
            sub = (m - 1) & m
            while sub:
                other = m ^ sub
                if sub < other:
                    c1, t1 = best[sub]
                    c2, t2 = best[other]
                    c = c1 + c2 + cost_of(sub, other, res[sub], res[other])
                    if choice is None or c < choice[0]:
                        choice = (c, Pair(t1, t2, tuple(sorted(res[m], key=id))))
                sub = (sub - 1) & m
            if key(m) in known:
                choice = (0.0, choice[1])
            best[m] = choice
        return best[full][1]

    def tree_cost(tree) -> tuple[float, int]:
        if isinstance(tree, Leaf):
            return 0.0, 1 << tree.index
        (cl, ml), (cr, mr) = tree_cost(tree.left), tree_cost(tree.right)
        if key(ml | mr) in known:
            return 0.0, ml | mr
        return cl + cr + cost_of(ml, mr, result_atoms(ml), result_atoms(mr)), ml | mr

    # Long chains (a component walked through many layers): the greedy tree, or the
    # factors applied in the order the walk met them (a forward pass), whichever is cheaper.
    chain: object = Leaf(0)
    mask = 1
    for i in range(1, n):
        mask |= 1 << i
        chain = Pair(chain, Leaf(i), tuple(sorted(result_atoms(mask), key=id)))
    greedy = _greedy(n, result_atoms, key, known, size)
    return min((greedy, chain), key=lambda t: tree_cost(t)[0])


def _greedy(n, result_atoms, key, known, size):
    """Repeatedly contract the pair that shrinks the network most (pairs sharing an atom
    first). A pair's score never changes while planning, so each is scored once."""
    nodes = {1 << i: Leaf(i) for i in range(n)}

    def score(mi, mj):
        ri, rj = result_atoms(mi), result_atoms(mj)
        gain = (0 if key(mi | mj) in known else
                prod(size[a] for a in result_atoms(mi | mj)) - prod(size[a] for a in ri) - prod(size[a] for a in rj))
        return (not (ri & rj), gain, prod(size[a] for a in (ri | rj)), min(mi, mj), max(mi, mj))

    cands = {}
    masks = list(nodes)
    for x, mi in enumerate(masks):
        for mj in masks[x + 1:]:
            cands[mi, mj] = score(mi, mj)
    while len(nodes) > 1:
        mi, mj = min(cands, key=cands.get)
        merged = mi | mj
        tree = Pair(nodes.pop(mi), nodes.pop(mj), tuple(sorted(result_atoms(merged), key=id)))
        cands = {p: c for p, c in cands.items() if mi not in p and mj not in p}
        for m in nodes:
            cands[m, merged] = score(m, merged)
        nodes[merged] = tree
    return next(iter(nodes.values()))


def subset_key(operand_keys, result_atoms) -> tuple:
    return (frozenset(operand_keys), frozenset(result_atoms))


def leaves_of(tree) -> list[int]:
    if isinstance(tree, Leaf):
        return [tree.index]
    return leaves_of(tree.left) + leaves_of(tree.right)
