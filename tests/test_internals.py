"""The compiler's building blocks: atoms, contraction planning, runtime kernels."""
from __future__ import annotations

import random

import pytest
import torch

from fxdecomp import kernels
from fxdecomp.components import Component, ComponentTable
from fxdecomp.decomposition import Decomposition
from fxdecomp.core.atoms import AtomTable, RefineError
from fxdecomp.core.planner import Leaf, leaves_of, plan


def test_reshape_refines_and_unify_matches():
    t = AtomTable()
    b = t.new(2, ("batch",), "batch")
    n = t.new(6, ("grid", "row"), "spatial")
    d = t.new(12, ("feature",), "channel")
    out = t.reshape([(b,), (n,), (d,)], [2, 6, 3, 4])
    assert out is not None and [tuple(a.size for a in ax) for ax in out] == [(2,), (6,), (3,), (4,)]
    assert [a.size for a in t.leaves(d)] == [3, 4]
    merged = t.reshape([(b,), (n,), (d,)], [12, 12])  # (b, n) merged, d kept
    assert [a.size for a in t.resolve(merged[0])] == [2, 6]
    # a 4x3 view of a 3x4-refined axis cannot be expressed
    assert t.reshape([(d,)], [4, 3]) is None
    e = t.new(12, ("param", "w", 0), "other")
    assert t.unify((e,), (d,))
    assert [a.size for a in t.leaves(e)] == [3, 4]
    assert t.resolve((e,)) == t.resolve((d,))


def test_batch_axis_is_never_split():
    t = AtomTable()
    b = t.new(4, ("batch",), "batch")
    with pytest.raises(RefineError):
        t.reshape([(b,)], [2, 2])


def test_coordinates_follow_concatenation_and_windows():
    t = AtomTable()
    rows, cols = t.new(4, ("grid", "row"), "spatial"), t.new(6, ("grid", "col"), "spatial")
    tokens = t.new(1 + 24, ("cat", (((), 1, "cls_token"), ((rows, cols), 24, None))), "spatial")
    recs = t.coordinates((tokens,))
    grid = {"rows": 4, "cols": 6}  # each position carries the extent of the grid it is on
    assert recs[0] == {"prefix": "cls_token"} and recs[1] == {"row": 0, "col": 0, **grid}
    assert recs[24] == {"row": 3, "col": 5, **grid}
    # window partition: rows -> (2 windows, 2 inside), cols -> (3, 2)
    wr, ir = t.refine(rows, [2, 2])
    wc, ic = t.refine(cols, [3, 2])
    recs = t.coordinates((wr, wc, ir, ic))
    assert recs[0] == {"row": 0, "col": 0, **grid}
    # window (1, 2), inside (1, 1) -> row 3, col 5
    idx = ((1 * 3 + 2) * 2 + 1) * 2 + 1
    assert recs[idx] == {"row": 3, "col": 5, **grid}
    # a coarser grid seen alone (after patch merging) keeps its own coordinates, on a grid of its own size
    assert t.coordinates((wr,)) == [{"row": 0, "rows": 2}, {"row": 1, "rows": 2}]


def test_a_partly_summed_grid_is_placed_on_a_coarser_grid():
    """A 2x2 token merge keeps the high parts of a row and a column of a flat token axis: each
    merged token stands for one aligned 2x2 block, so it has a position on the 4x4 grid."""
    t = AtomTable()
    rows, cols = t.new(8, ("grid", "row"), "spatial"), t.new(8, ("grid", "col"), "spatial")
    flat = t.new(64, ("regroup", (rows, cols)), "spatial")
    r_hi, _, c_hi, _ = t.refine(flat, [4, 2, 4, 2])
    recs = t.coordinates((r_hi, c_hi))
    assert recs == [{"row": r, "col": c, "rows": 4, "cols": 4} for r in range(4) for c in range(4)]


def _random_network(rng: random.Random):
    atoms = [f"i{k}" for k in range(rng.randint(3, 7))]
    size = {a: rng.randint(2, 4) for a in atoms}
    ops = []
    for _ in range(rng.randint(2, 6)):
        ops.append(tuple(rng.sample(atoms, rng.randint(1, 3))))
    used = sorted({a for o in ops for a in o})
    out = tuple(a for a in used if rng.random() < 0.4)
    return ops, out, size


def _check_plan(ops, out, size, fixed=frozenset()):
    """The planned pairwise contraction tree computes what one einsum over all operands does."""
    letters = {a: chr(97 + i) for i, a in enumerate(sorted(size))}
    tensors = [torch.randn(*[size[a] for a in o], dtype=torch.float64) for o in ops]
    expect = torch.einsum(",".join("".join(letters[a] for a in o) for o in ops) + "->" +
                          "".join(letters[a] for a in out), *tensors)
    tree = plan([(i, o) for i, o in enumerate(ops)], out, size, fixed=fixed)
    assert sorted(leaves_of(tree)) == list(range(len(ops)))

    def run(node):
        if isinstance(node, Leaf):
            return tensors[node.index], ops[node.index]
        (x, xa), (y, ya) = run(node.left), run(node.right)
        res = tuple(node.atoms)
        eq = f"{''.join(letters[a] for a in xa)},{''.join(letters[a] for a in ya)}->{''.join(letters[a] for a in res)}"
        return torch.einsum(eq, x, y), res

    got, atoms = run(tree)
    got = torch.einsum("".join(letters[a] for a in atoms) + "->" + "".join(letters[a] for a in out), got)
    torch.testing.assert_close(got, expect)
    return tree


@pytest.mark.parametrize("seed", range(25))
def test_planned_contraction_equals_einsum(seed):
    rng = random.Random(seed)
    ops, out, size = _random_network(rng)
    _check_plan(ops, out, size)


@pytest.mark.parametrize("seed", range(8))
def test_long_networks_are_planned_correctly(seed):
    """More operands than the exact planner takes: the greedy tree or the walk's own order."""
    rng = random.Random(100 + seed)
    atoms = [f"i{k}" for k in range(14)]
    size = {a: rng.randint(2, 3) for a in atoms}
    ops = [tuple(rng.sample(atoms, rng.randint(1, 3))) for _ in range(rng.randint(11, 16))]
    used = sorted({a for o in ops for a in o})
    out = tuple(a for a in used if rng.random() < 0.3)
    _check_plan(ops, out, size)


def _subtrees(tree) -> list:
    return [] if isinstance(tree, Leaf) else [sorted(leaves_of(tree))] + _subtrees(tree.left) + _subtrees(tree.right)


def test_a_long_chain_meets_its_weights_multiplied_together():
    """A component carried through a chain of linears with per-token scales between them (a
    Swin's frozen norms and patch merges), longer than the exact planner takes: the weights
    alone are made once, so their product meets the images once, not one map at a time."""
    size = {"b": 8, "t": 49, "c": 512, "k": 512, "d": 256, "d2": 256, "e": 256, "e2": 256, "f": 256, "g": 64}
    ops = [("b", "t", "c"), ("c", "k"), ("b", "t"), ("k", "d"), ("b", "t"), ("d", "d2"), ("d2", "e"),
           ("b", "t"), ("e", "e2"), ("e2", "f"), ("t",), ("f", "g")]
    weights = [1, 3, 5, 6, 8, 9, 11]
    plain = _check_plan(ops, ("b", "g"), size)
    once = _check_plan(ops, ("b", "g"), size, fixed=frozenset(weights + [10]))
    assert weights in _subtrees(once) and weights not in _subtrees(plain)


def test_planner_selects_before_multiplying():
    # readout row (size 1 after selection) x attention [b, h, i, j] x values [b, h, j, e] x weight [o, h, e]
    size = {"b": 32, "h": 12, "j": 197, "e": 64, "o": 768}
    ops = [("b", "h", "j"), ("b", "h", "j", "e"), ("o", "h", "e")]
    tree = plan([(i, o) for i, o in enumerate(ops)], ("b", "h", "o"), size)
    # the cheap order contracts attention with values first (no [b, h, j, o] intermediate)
    first = tree.left if not isinstance(tree.left, Leaf) else tree.right
    assert sorted(leaves_of(first)) == [0, 1]


@pytest.mark.parametrize("eq,shapes", [
    ("abc,dbce->bdea", [(5, 3, 4), (2, 3, 4, 6)]),
    ("ab,cb->ac", [(4, 5), (3, 5)]),
    ("abc,ac->bca", [(2, 3, 4), (2, 4)]),
    ("ab,b->ab", [(3, 4), (4,)]),
])
@pytest.mark.parametrize("accumulate", [False, True])
def test_contract_into_matches_einsum(eq, shapes, accumulate):
    """Output letters read as (split..., batch, rest); the group sits between two foreign slots."""
    x, y = (torch.randn(*sh, dtype=torch.float64) for sh in shapes)
    value = torch.einsum(eq, x, y)
    count, batch, rest = value[..., 0, 0].numel(), value.shape[-2], value.shape[-1]
    out = torch.full((count + 2, batch, rest), 7.0, dtype=torch.float64)
    view_shape = tuple(value.shape[:-2]) + (-1, rest)
    present = (True,) * value.dim()
    kernels.contract_into(out, 1, count, view_shape, present, eq, x, y, coef=0.5, accumulate=accumulate)
    base = 7.0 if accumulate else 0.0
    torch.testing.assert_close(out[1:1 + count], base + 0.5 * value.reshape(count, batch, rest))
    assert (out[0] == 7).all() and (out[-1] == 7).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_relative_error_for_every_report_of_it(dtype):
    """``fxdecomp.reconstruction`` against the suite's own computation, and a decomposition's ``error()`` is it."""
    from conftest import rel_err

    from fxdecomp.reconstruction import max_relative_error, relative_errors

    g = torch.Generator().manual_seed(0)
    out = torch.randn(5, 3, 7, generator=g, dtype=torch.float64).to(dtype)
    total = out + 1e-3 * torch.arange(5, dtype=dtype).view(5, 1, 1) * torch.randn(5, 3, 7, generator=g).to(dtype)
    per = relative_errors(total, out)
    assert per.dtype == torch.float64 and per.shape == (5,) and per[0] == 0 and bool((per[1:] > 0).all())
    for i in range(5):
        assert float(per[i]) == pytest.approx(rel_err(total[i:i + 1], out[i:i + 1]), rel=1e-6 if dtype == torch.float32 else 1e-12)
    assert float(max_relative_error(total, out)) == float(per.max()) == pytest.approx(rel_err(total, out), rel=1e-6)
    zero = torch.zeros(1, 4, dtype=dtype)
    assert float(relative_errors(zero, zero)) == 0 and float(relative_errors(zero + 1e-30, zero)) > 1e100
    comps = ComponentTable([Component(0, "a", "mlp"), Component(1, "b", "bias")])
    dec = Decomposition(torch.stack([total[:, 0], torch.zeros_like(total[:, 0])], 1), comps, out[:, 0])
    assert dec.error() == float(relative_errors(total[:, 0], out[:, 0]).max())
