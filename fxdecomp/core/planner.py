"""Contraction order for one term's factors.

Finding the cheapest order is what makes decomposition demand-driven: a
class-token readout selects one row of the attention weights before anything
is multiplied, and the readout's weight matrices are multiplied together (once,
shared by every term) before they meet per-token activations. A product of fixed
operands alone (weights, constants: no batch axis) is computed once and kept (the
hoist pass), so it costs only the memory of its result. Small networks
(the usual case) are planned exactly by dynamic programming over subsets;
larger ones (a component carried through many layers) take the cheaper of a
greedy order and the order the walk met the factors in, or a greedy order that
multiplies weights alone first where that is clearly cheaper. Intermediates other
terms already computed cost nothing; a convolution's taps cost an index. A convolution
whose kernel and taps are one operand (``convs``) is applied as the convolution itself: it may
only meet the whole of what holds its input positions, and costs the convolution's
multiplications, never a dense map over the grid.
"""
from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass
from functools import cache, cached_property
from math import prod
from typing import Container, Hashable, Sequence

EXACT_LIMIT = 10
#: a weights-first greedy order replaces the plain one only below this share of its cost
WEIGHTS_FIRST_MARGIN = 0.5
INFEASIBLE = float("inf")


@dataclass(frozen=True)
class Leaf:
    index: int


@dataclass(frozen=True)
class Pair:
    left: "Leaf | Pair"
    right: "Leaf | Pair"
    atoms: tuple  # atoms of the result, in a canonical order

    @cached_property
    def leaves(self) -> list[int]:
        return leaves_of(self.left) + leaves_of(self.right)


@dataclass(frozen=True)
class Conv:
    """A convolution operand's planning facts: the input atoms its taps read (summed where it
    is applied) and its multiplications per output (its kernel's taps, or its input positions
    where it is applied as its dense map)."""

    ins: frozenset
    per_output: int


def conv_cost(conv: Conv, other: frozenset, result: frozenset, union: frozenset, size: dict) -> float:
    """Multiplications of a convolution operand applied to a product holding ``other`` atoms;
    INFEASIBLE unless that product holds every input atom and nothing beyond still needs one."""
    if not conv.ins <= other or conv.ins & result:
        return INFEASIBLE
    return prod(size[a] for a in union - conv.ins) * conv.per_output


def pair_conv_cost(c1: Conv | None, c2: Conv | None, r1: frozenset, r2: frozenset, result: frozenset,
                   size: dict) -> float | None:
    """The cost of a pair where a side is a convolution operand alone (``c1``/``c2``, None for
    any other side; ``r1``/``r2`` the sides' atoms): None where neither is, INFEASIBLE where both
    are (a convolution applies to a value, not to another convolution)."""
    if c1 is None and c2 is None:
        return None
    if c1 is not None and c2 is not None:
        return INFEASIBLE
    conv, other = (c1, r2) if c1 is not None else (c2, r1)
    return conv_cost(conv, other, result, r1 | r2, size)


def plan(operands: Sequence[tuple[Hashable, tuple]], output: tuple, size: dict,
         known: Container = frozenset(), gathers: dict | None = None, fixed: Container[int] = frozenset(),
         convs: dict | None = None):
    """Return a contraction tree over ``operands`` producing the ``output`` atoms, or None when
    ``convs`` leave no order in which every convolution meets its whole input.

    ``operands`` are (key, atoms) pairs; ``known`` holds keys (see
    :func:`subset_key`) of intermediates that are free to reuse. ``gathers`` maps
    an operand's index to the atom it selects from (a convolution's taps): meeting
    such an operand costs an index, not a product over that atom. ``fixed`` holds the
    indices of operands that do not depend on the images: a product of those alone is
    made once, so it costs the size of its result instead of its multiplications. ``convs``
    maps an operand's index to its :class:`Conv`: that operand is applied only as a whole
    convolution (see :func:`conv_cost`).
    """
    n = len(operands)
    atom_sets = [frozenset(a) for _, a in operands]
    canon = _canonical_order(operands, output)
    out = frozenset(output)
    gathers = gathers or {}
    convs = convs or {}
    if n == 1:
        return None if convs else Leaf(0)
    full = (1 << n) - 1
    fixed_mask = sum(1 << i for i in range(n) if i in fixed)

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

    def single(m):
        return m.bit_length() - 1 if m & (m - 1) == 0 else None

    def cost_of(m1, m2, r1, r2):
        c = pair_conv_cost(convs.get(single(m1)), convs.get(single(m2)), r1, r2, result_atoms(m1 | m2), size)
        if c is not None:
            return c
        if (m1 | m2) & ~fixed_mask == 0:
            return prod(size[a] for a in result_atoms(m1 | m2))
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
                        choice = (c, Pair(t1, t2, canon(res[m])))
                sub = (sub - 1) & m
            if key(m) in known:
                choice = (0.0, choice[1])
            best[m] = choice
        return None if best[full][0] == INFEASIBLE else best[full][1]

    # Long chains (a component walked through many layers): the greedy tree, or the
    # factors applied in the order the walk met them (a forward pass), whichever is cheaper.
    # Both are costed with atom counts carried up the tree, never by re-scanning operands.
    total = Counter(a for atoms in atom_sets for a in atoms)
    keys = [operands[i][0] for i in range(n)]
    chain: object = Leaf(0)
    for i in range(1, n):
        chain = Pair(chain, Leaf(i), ())
    greedy = _greedy(atom_sets, keys, out, total, known, size, canon, convs)
    costed = [_costed(t, atom_sets, keys, out, total, known, size, gathers, fixed, canon, convs)
              for t in (greedy, chain)]
    cost, tree = min(costed, key=lambda ct: ct[0])
    if _weights_meet(atom_sets, fixed, convs, out):
        # weights first: a norm's centring or scale meets the next linear once, not per batch
        # (a Swin's patch merges). Taken only when clearly cheaper: a term's cost cannot see
        # the intermediates later terms would have shared with it (a ResNet's components
        # through the same gates), and a small margin measured worse there.
        c, t = _costed(_greedy(atom_sets, keys, out, total, known, size, canon, convs, fixed),
                       atom_sets, keys, out, total, known, size, gathers, fixed, canon, convs)
        if c < WEIGHTS_FIRST_MARGIN * cost:
            cost, tree = c, t
    return None if cost == INFEASIBLE else tree


def _canonical_order(operands, output):
    """Orders a partial product's atoms by where they first appear (operands, then output).

    The order fixes the generated einsums' equations, and so the memory layouts their kernels
    see. It must depend on the term alone, never on object addresses: otherwise the same model
    compiled in two processes gets different code, which rounds differently."""
    rank: dict = {}
    for _, atoms in operands:
        for a in atoms:
            rank.setdefault(a, len(rank))
    for a in output:
        rank.setdefault(a, len(rank))

    def canon(atoms) -> tuple:
        return tuple(sorted(atoms, key=rank.__getitem__))
    return canon


def _result(inside: Counter, out: frozenset, total: Counter) -> frozenset:
    """Atoms of a partial product that something outside it (or the output) still needs."""
    return frozenset(a for a, c in inside.items() if a in out or total[a] > c)


def _costed(tree, atom_sets, keys, out, total, known, size, gathers, fixed, canon, convs) -> tuple[float, object]:
    """(cost, the same tree with each pair's result atoms filled in)."""

    def walk(t):
        if isinstance(t, Leaf):
            inside = Counter(atom_sets[t.index])
            return 0.0, t, inside, frozenset([keys[t.index]]), _result(inside, out, total), t.index in fixed
        cl, tl, il, kl, rl, fl = walk(t.left)
        cr, tr, ir, kr, rr, fr = walk(t.right)
        inside, ks = il + ir, kl | kr
        res = _result(inside, out, total)
        union = rl | rr
        for side in (tl, tr):
            g = gathers.get(side.index) if isinstance(side, Leaf) else None
            if g is not None and g not in res:
                union = union - {g}
        conv = pair_conv_cost(*(convs.get(side.index) if isinstance(side, Leaf) else None for side in (tl, tr)),
                              rl, rr, res, size)
        if conv is not None:
            here = cl + cr + conv
        elif (ks, res) in known:
            here = 0.0
        elif fl and fr:  # made once: its memory, not its multiplications
            here = cl + cr + prod(size[a] for a in res)
        else:
            here = cl + cr + prod(size[a] for a in union)
        return here, Pair(tl, tr, canon(res)), inside, ks, res, fl and fr

    cost, filled, *_ = walk(tree)
    return cost, filled


def _weights_meet(atom_sets, fixed, convs, out) -> bool:
    """Whether two weights (fixed, not convolution kernels) share an atom the output does not
    keep: otherwise a weights-first greedy order is the plain one, and is not tried."""
    seen: set = set()
    for i in fixed:
        if convs.get(i) is None:
            summed = atom_sets[i] - out
            if summed & seen:
                return True
            seen |= summed
    return False


def _greedy(atom_sets, keys, out, total, known, size, canon, convs, fixed=frozenset()):
    """Repeatedly contract the pair that shrinks the network most (pairs sharing an atom
    the output does not keep first: sharing the batch reduces nothing; a convolution
    operand only with the whole of its input, where it can). A pair's score
    depends only on which operands it holds, so each is scored once; only pairs sharing
    such an atom are scored, unless none is left."""
    n = len(atom_sets)
    # products of weights alone, made once, not per batch (a convolution's kernel stays a leaf:
    # applied as the convolution, it is cheaper than any product made with it)
    made_once = {1 << i for i in fixed if convs.get(i) is None}
    state = {}  # mask -> (tree, atom counts inside, operand keys, result atoms, their size)
    holders: dict = {}  # atom -> masks whose result holds it
    for i in range(n):
        inside = Counter(atom_sets[i])
        res = _result(inside, out, total)
        state[1 << i] = (Leaf(i), inside, frozenset([keys[i]]), res, prod(size[a] for a in res))
        for a in res - out:
            holders.setdefault(a, set()).add(1 << i)

    def score(mi, mj):
        _, ii, ki, ri, si = state[mi]
        _, ij, kj, rj, sj = state[mj]
        union = ri | rj
        # a merged product keeps only atoms still needed outside it (never one both sides
        # contracted away already: those are in neither result)
        merged = [a for a in union if a in out or total[a] > ii.get(a, 0) + ij.get(a, 0)]
        gain = 0 if (ki | kj, frozenset(merged)) in known else prod(size[a] for a in merged) - si - sj
        conv = pair_conv_cost(*(convs.get(m.bit_length() - 1) if m & (m - 1) == 0 else None for m in (mi, mj)),
                              ri, rj, frozenset(merged), size)
        # two weights that share a summed atom, multiplied into no more than the larger holds
        # (a norm's centring into the next linear): made once, so first
        once = mi in made_once and mj in made_once and bool((ri & rj) - out) and \
            prod(size[a] for a in merged) <= max(si, sj)
        return (conv == INFEASIBLE, not once, not (ri & rj) - out, gain, prod(size[a] for a in union),
                min(mi, mj), max(mi, mj))

    heap, seen = [], set()

    def offer(mi, mj):
        pair = (min(mi, mj), max(mi, mj))
        if pair not in seen:
            seen.add(pair)
            heapq.heappush(heap, (score(*pair), pair))

    for masks in holders.values():
        ms = sorted(masks)
        for x, mi in enumerate(ms):
            for mj in ms[x + 1:]:
                offer(mi, mj)
    while len(state) > 1:
        while heap and not (heap[0][1][0] in state and heap[0][1][1] in state):
            heapq.heappop(heap)
        if not heap:  # nothing shares an atom: outer products, cheapest first
            ms = sorted(state)
            for x, mi in enumerate(ms):
                for mj in ms[x + 1:]:
                    offer(mi, mj)
            continue
        _, (mi, mj) = heapq.heappop(heap)
        ti, ii, ki, ri, _ = state.pop(mi)
        tj, ij, kj, rj, _ = state.pop(mj)
        for a in ri - out:
            holders[a].discard(mi)
        for a in rj - out:
            holders[a].discard(mj)
        inside = ii + ij
        res = _result(inside, out, total)
        merged = mi | mj
        if mi in made_once and mj in made_once:
            made_once.add(merged)
        state[merged] = (Pair(ti, tj, canon(res)), inside, ki | kj, res,
                         prod(size[a] for a in res))
        for a in res - out:
            for other in holders.get(a, ()):
                offer(merged, other)
            holders.setdefault(a, set()).add(merged)
    return next(iter(state.values()))[0]


def subset_key(operand_keys, result_atoms) -> tuple:
    return (frozenset(operand_keys), frozenset(result_atoms))


def leaves_of(tree) -> list[int]:
    if isinstance(tree, Leaf):
        return [tree.index]
    return tree.leaves
