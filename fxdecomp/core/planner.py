"""Contraction order for one term's factors.

Finding the cheapest order is what makes decomposition demand-driven: a
class-token readout selects one row of the attention weights before anything
is multiplied, and the readout's weight matrices are multiplied together (once,
shared by every term) before they meet per-token activations. Small networks
(the usual case) are planned exactly by dynamic programming over subsets;
larger ones greedily. Intermediates other terms already computed cost nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Hashable, Sequence

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
         known: set | frozenset = frozenset()):
    """Return a contraction tree over ``operands`` producing the ``output`` atoms.

    ``operands`` are (key, atoms) pairs; ``known`` holds keys (see
    :func:`subset_key`) of intermediates that are free to reuse.
    """
    n = len(operands)
    atom_sets = [frozenset(a) for _, a in operands]
    out = frozenset(output)
    if n == 1:
        return Leaf(0)
    full = (1 << n) - 1

    def atoms_of(mask):
        s = set()
        for i in range(n):
            if mask >> i & 1:
                s |= atom_sets[i]
        return s

    def result_atoms(mask):
        inside = atoms_of(mask)
        outside = atoms_of(full & ~mask) | out
        return frozenset(a for a in inside if a in outside)

    def key(mask):
        return subset_key([operands[i][0] for i in range(n) if mask >> i & 1], result_atoms(mask))

    def cost_of(r1, r2):
        return prod(size[a] for a in (r1 | r2))

    if n <= EXACT_LIMIT:
        best: dict[int, tuple[float, object]] = {}
        res: dict[int, frozenset] = {}
        masks = sorted(range(1, full + 1), key=lambda m: bin(m).count("1"))
        for m in masks:
            res[m] = result_atoms(m)
            if m & (m - 1) == 0:
                best[m] = (0.0, Leaf(m.bit_length() - 1))
                continue
            if key(m) in known:
                free = True
            else:
                free = False
            choice = None
            sub = (m - 1) & m
            while sub:
                other = m ^ sub
                if sub < other:
                    c1, t1 = best[sub]
                    c2, t2 = best[other]
                    c = c1 + c2 + cost_of(res[sub], res[other])
                    if choice is None or c < choice[0]:
                        choice = (c, Pair(t1, t2, tuple(sorted(res[m], key=id))))
                sub = (sub - 1) & m
            if free:
                choice = (0.0, choice[1])
            best[m] = choice
        return best[full][1]

    # greedy: repeatedly contract the pair that shrinks the network most
    nodes = [(Leaf(i), 1 << i) for i in range(n)]
    while len(nodes) > 1:
        pick = None
        for i in range(len(nodes)):
            for j in range(i + 1, len(nodes)):
                mi, mj = nodes[i][1], nodes[j][1]
                ri, rj = result_atoms(mi), result_atoms(mj)
                rr = result_atoms(mi | mj)
                shared = bool(ri & rj)
                score = (0 if key(mi | mj) in known else
                         prod(size[a] for a in rr) - prod(size[a] for a in ri) - prod(size[a] for a in rj))
                c = cost_of(ri, rj)
                cand = (not shared, score, c, i, j)
                if pick is None or cand < pick:
                    pick = cand
        _, _, _, i, j = pick
        (ti, mi), (tj, mj) = nodes[i], nodes[j]
        merged = (Pair(ti, tj, tuple(sorted(result_atoms(mi | mj), key=id))), mi | mj)
        nodes = [x for k, x in enumerate(nodes) if k not in (i, j)] + [merged]
    return nodes[0][0]


def subset_key(operand_keys, result_atoms) -> tuple:
    return (frozenset(operand_keys), frozenset(result_atoms))


def leaves_of(tree) -> list[int]:
    if isinstance(tree, Leaf):
        return [tree.index]
    return leaves_of(tree.left) + leaves_of(tree.right)
