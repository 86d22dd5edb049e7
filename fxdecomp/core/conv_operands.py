"""A convolution's kernel and taps as one operand of a term.

The conv rule writes a convolution as factors: its kernel, and per spatial axis a 0/1 tap
tensor S[out, tap, in]. Contracted pairwise, a term meets them as a product with the whole
kernel (B·C·H·W·k² before the taps are taken) or as a dense map over the grid (kernel times
taps, whose size grows with the square of the grid), both far above what the convolution
itself costs. Made one operand, the planner may only apply it to the whole of what holds its
input positions (``planner.Conv``), and code generation emits the convolution itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import prod

from .planner import Conv
from .terms import OneHot, Source, Taps

#: the largest dense map (elements) a convolution is applied through instead of as a convolution:
#: a per-channel map of a small grid (FastViT-MCI's last stages, where oneDNN's grouped call is
#: slow); a full convolution's (ResNet-18's 512 -> 512 at 2x2: 4M elements) is laid out anew by
#: each term's einsum, slower than the convolution
DENSE_CONV_LIMIT = 1 << 16


@dataclass(frozen=True)
class ConvOperand(Source):
    """A convolution's kernel (atomized, one dim per atom) and its taps along each spatial
    axis ((Taps, (out, tap, in)) each), applied as the convolution (``kernels.conv_apply``): the
    model's own cost per term."""

    weight: Source
    weight_atoms: tuple
    taps: tuple
    #: applied as its dense map (kernel times taps, made once) where the grid is no larger than
    #: the kernel: fewer multiplications, one matrix product
    dense: bool = False
    name: str = "conv"


def overlapping(taps: Taps) -> bool:
    """Whether a convolution's windows overlap or are padded along this axis: where they are
    not (a patch embedding's), gathering its taps is a reshape and the kernel one matrix
    product, cheaper than a convolution call per term."""
    _n_out, k, _n_in, stride, pad, dilation = taps.geometry
    return pad > 0 or dilation * (k - 1) + 1 > stride


def fuse_convolutions(ops: list, present: set, batch) -> tuple[list, dict]:
    """``ops`` ((source, atoms) pairs, one dim per atom) with each convolution's kernel and taps
    made one :class:`ConvOperand`, and the planner's :class:`Conv` for each, by its index.

    A convolution is made one where every tap of its kernel can be: the taps' input atom is
    summed by the term (not in ``present``: a component kept per source position keeps its
    taps, gathered), another operand holds it, and the kernel is a weight (no ``batch`` atom)."""
    holders: dict = {}
    for i, (_, atoms) in enumerate(ops):
        for a in atoms:
            holders.setdefault(a, []).append(i)
    by_kernel: dict = {}
    for i, (src, atoms) in enumerate(ops):
        if not (isinstance(src, Taps) and len(atoms) == 3):
            continue
        out_a, tap, in_a = atoms
        others = [j for j in holders[tap] if j != i]
        if len(others) != 1:
            continue
        w = others[0]
        w_src, w_atoms = ops[w]
        if (overlapping(src) and not isinstance(w_src, (Taps, OneHot)) and batch not in w_atoms
                and in_a not in present and in_a not in w_atoms and out_a not in w_atoms
                and any(j not in (i, w) for j in holders[in_a])):
            by_kernel.setdefault(w, []).append(i)
    made = {}
    for w, taps in by_kernel.items():
        w_atoms = ops[w][1]
        if any(isinstance(src, Taps) and len(atoms) == 3 and atoms[1] in w_atoms and j not in taps
               for j, (src, atoms) in enumerate(ops)):
            continue  # a kernel some of whose taps cannot be applied with it
        geo = tuple(ops[i] for i in taps)
        tap_atoms = {t for _, (_o, t, _i) in geo}
        atoms = tuple(a for a in w_atoms if a not in tap_atoms) + tuple(a for _, (o, _t, i) in geo for a in (o, i))
        per_tap, per_input = prod(t.size for t in tap_atoms), prod(i.size for _, (_o, _t, i) in geo)
        # a grid no larger than the kernel (the last stages): its dense map is smaller than the
        # convolution's work, and one matrix product applies it
        dense = per_input <= per_tap and prod(a.size for a in atoms) <= DENSE_CONV_LIMIT
        made[w] = ((ConvOperand(ops[w][0], w_atoms, geo, dense), atoms),
                   Conv(frozenset(i for _, (_o, _t, i) in geo), min(per_tap, per_input)))
    if not made:
        return ops, {}
    dropped = {i for w in made for i in by_kernel[w]}
    out, convs = [], {}
    for i, op in enumerate(ops):
        if i in made:
            convs[len(out)] = made[i][1]
            out.append(made[i][0])
        elif i not in dropped:
            out.append(op)
    return out, convs
