"""Convolutions as taps applied by gathering, or with their kernel as the convolution itself:
both equal the dense 0/1 tap tensor for every geometry, the planner applies a convolution only
to the whole of its input, and linearised chains of strided, dilated, grouped and padded
convolutions on the stream decompose exactly through them."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

import fxdecomp
from conftest import bound, images, jitter_, rel_err
from fxdecomp import kernels
from fxdecomp.core.planner import Conv, Leaf, leaves_of, plan
from fxdecomp.core.terms import Taps


@given(n_in=st.integers(1, 12), k=st.integers(1, 5), stride=st.integers(1, 3), pad=st.integers(0, 3),
       dilation=st.integers(1, 3), dim=st.integers(0, 2))
def test_gather_equals_the_dense_taps(n_in, k, stride, pad, dilation, dim):
    n_out = (n_in + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    if n_out < 1:
        return
    taps = Taps(n_out, k, n_in, stride, pad, dilation).tensor
    shape = [2, 3, 4]
    shape[dim] = n_in
    x = torch.randn(*shape, dtype=torch.float64)
    got = kernels.tap_gather(x, dim, n_out, k, stride, pad, dilation)
    want = torch.movedim(torch.tensordot(torch.movedim(x, dim, -1), taps, dims=([-1], [2])), (-2, -1), (dim, dim + 1))
    assert got.shape == want.shape
    assert torch.equal(got, want)


@settings(deadline=None)
@given(n_in=st.integers(1, 9), k=st.integers(1, 4), stride=st.integers(1, 3), pad=st.integers(0, 3),
       dilation=st.integers(1, 2), extra=st.integers(0, 2), groups=st.integers(1, 3), outs=st.integers(1, 3),
       ins=st.integers(1, 3), lead=st.integers(0, 2), nsp=st.integers(1, 2), seed=st.integers(0, 2**16),
       split=st.booleans())
def test_conv_apply_equals_the_dense_taps(n_in, k, stride, pad, dilation, extra, groups, outs, ins, lead, nsp, seed,
                                          split):
    """A kernel and its taps applied as one (grouped) convolution equal the product with the
    dense taps, whatever the dims' order (a layout no view reaches is copied channels-last),
    also where the taps read past a symmetric padding (``extra`` more outputs than the
    convolution's own) and outputs lie wholly in the padding; a depthwise one with several
    outputs per channel also as one call per output (``split``)."""
    split = outs if split and ins == 1 and outs > 1 and groups > 1 else 1
    n_out = (n_in + 2 * pad - dilation * (k - 1) - 1) // stride + 1 + extra
    if n_out < 1:
        return
    g = torch.Generator().manual_seed(seed)
    taps = Taps(n_out, k, n_in, stride, pad, dilation)
    lead_sizes = [2, 3][:lead]
    # x: [*lead, groups, ins, *positions]; w: [groups, outs, ins, *taps], then shuffled
    x = torch.randn(*lead_sizes, groups, ins, *([n_in] * nsp), generator=g, dtype=torch.float64)
    w = torch.randn(groups, outs, ins, *([k] * nsp), generator=g, dtype=torch.float64)
    letters = "abcdefghij"
    xl = letters[:lead] + "GI" + "pq"[:nsp]
    wl = "GOI" + "rs"[:nsp]
    tl = ["Prp", "Qsq"][:nsp]
    want = torch.einsum(f"{xl},{wl},{','.join(tl)}->{letters[:lead]}GO{'PQ'[:nsp]}", x, w, *[taps.tensor] * nsp)
    x_order = torch.randperm(x.dim(), generator=g).tolist()
    w_order = torch.randperm(w.dim(), generator=g).tolist()
    xs, ws = x.permute(x_order), w.permute(w_order)
    x_perm = tuple(x_order.index(i) for i in range(x.dim()))  # back to [*lead, groups, ins, *positions]
    w_canon = ([1, 0] if split > 1 else [0, 1]) + [2] + list(range(3, 3 + nsp))
    w_perm = tuple(w_order.index(i) for i in w_canon)
    wk = kernels.conv_weight(ws, w_perm, groups, outs, ins, nsp)
    got = kernels.conv_apply(xs, wk, x_perm, lead, groups, (taps.geometry,) * nsp, (groups, outs), split)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_a_layout_no_view_reaches_is_copied_channels_last():
    """Heads stacked outside the batch (MobileCLIP's last 3x3 meets them so) cannot be viewed as
    one batch: the copy is channels-last, and a split depthwise convolution on it still equals
    the grouped one, output ``c·split + s`` from part ``s``."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 6, 6, 4, generator=g, dtype=torch.float64).permute(1, 0, 4, 2, 3)  # [b, h, c, H, W], h outer
    w = torch.randn(4 * 2, 1, 3, 3, generator=g, dtype=torch.float64)  # two outputs per channel
    flat = kernels._as_conv_input(x, 2, 4, 2)
    assert flat.shape == (6, 4, 6, 6) and flat.is_contiguous(memory_format=torch.channels_last)
    geometry = ((6, 3, 6, 1, 1, 1),) * 2
    want = torch.nn.functional.conv2d(x.reshape(6, 4, 6, 6), w, padding=1, groups=4).reshape(2, 3, 4, 2, 6, 6)
    by_output = w.view(4, 2, 1, 3, 3).transpose(0, 1).reshape(8, 1, 3, 3)  # outputs first, as split wants
    got = kernels.conv_apply(x, by_output, (0, 1, 2, 3, 4), 2, 4, geometry, (4, 2), split=2)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_a_convolution_meets_the_whole_of_its_input():
    """The planner applies a convolution operand to the product of everything holding its input
    positions (the value and a gate on it), never to a part of it or to a weight, and refuses
    (None) where the input positions are asked for (kept per source position)."""
    size = {"b": 8, "c": 16, "h": 12, "w": 12, "o": 32, "H": 6, "W": 6, "d": 10}
    ops = [("b", "c", "h", "w"),            # the term's value at the convolution's input
           ("b", "c", "h", "w"),            # a frozen gate on it
           ("o", "c", "H", "h", "W", "w"),  # the convolution (kernel and taps)
           ("o",),                          # a BatchNorm scale after it
           ("d", "o", "H", "W")]            # a readout
    conv = {2: Conv(frozenset({"h", "w"}), 9)}
    tree = plan(list(enumerate(ops)), ("b", "d"), size, convs=conv)
    assert tree is not None

    def check(t):
        if isinstance(t, Leaf):
            return
        for side, other in ((t.left, t.right), (t.right, t.left)):
            if isinstance(side, Leaf) and side.index == 2:
                assert sorted(leaves_of(other)) == [0, 1], t
        check(t.left)
        check(t.right)
    check(tree)
    assert plan(list(enumerate(ops)), ("b", "h", "d"), size, convs=conv) is None
    # more operands than the exact planner takes: the greedy tree or the walk's order, still whole
    long = [("b", "c", "h", "w")] * 9 + ops[2:]
    conv_long = {9: Conv(frozenset({"h", "w"}), 9)}
    tree = plan(list(enumerate(long)), ("b", "d"), size, convs=conv_long)

    def find(t):
        if isinstance(t, Leaf):
            return None
        for side, other in ((t.left, t.right), (t.right, t.left)):
            if isinstance(side, Leaf) and side.index == 9:
                return sorted(leaves_of(other))
        return find(t.left) or find(t.right)
    assert find(tree) == list(range(9))


class ConvChain(nn.Module):
    """Non-residual conv stages on the stream (as in EfficientNet), with residual blocks
    between them; every activation on the stream is linearised."""

    def __init__(self, specs, width=8):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.stages = nn.ModuleList()
        self.blocks = nn.ModuleList()
        for k, stride, dilation, groups in specs:
            pad = dilation * (k - 1) // 2
            self.stages.append(nn.Sequential(
                nn.Conv2d(width, width, k, stride=stride, padding=pad, dilation=dilation, groups=groups),
                nn.BatchNorm2d(width), nn.SiLU()))
            self.blocks.append(nn.Sequential(nn.Conv2d(width, 2 * width, 1), nn.GELU(), nn.Conv2d(2 * width, width, 1)))

    def forward(self, x):
        x = self.stem(x)
        for stage, block in zip(self.stages, self.blocks):
            x = stage(x)
            x = x + block(x)
        return x.mean((2, 3))


specs = st.lists(st.tuples(st.sampled_from([1, 3, 5]), st.sampled_from([1, 2]), st.sampled_from([1, 2]),
                           st.sampled_from([1, 8])), min_size=1, max_size=3)


@settings(max_examples=max(2, settings().max_examples // 2))  # each example compiles a model
@given(specs=specs, seed=st.integers(0, 2**16), dtype=st.sampled_from([torch.float32, torch.float64]),
       granularity=st.sampled_from(["block", "token"]))
def test_linearised_conv_chains_are_exact(specs, seed, dtype, granularity):
    torch.manual_seed(seed)
    model = ConvChain(specs).eval()
    jitter_(model, scale=0.3, seed=seed)
    model = model.to(dtype)
    x = images((3, 24, 24), batch=2, dtype=dtype, seed=seed)
    dm = fxdecomp.decompose(model, granularity, input_size=(3, 24, 24), linearize=True)
    with torch.no_grad():
        err = rel_err(dm(x).total(), model(x))
    assert err <= bound(dtype), (specs, dtype, granularity, err)
    # the first stage is part of the stem (no branch before it); later ones are on the stream:
    # a kernel wider than one is applied as the convolution (whole, at block granularity; at token
    # granularity, where a component keeps its source positions, its taps are gathered instead),
    # a strided one-pixel kernel by gathering its taps, never as a dense product
    targets = {n.target for n in dm.graph_module.graph.nodes}
    if granularity == "block" and any(k > 1 for k, _, _, _ in specs[1:]):
        assert kernels.conv_apply in targets
    elif any(k > 1 or s > 1 for k, s, _, _ in specs[1:]):
        assert kernels.tap_gather in targets or kernels.conv_apply in targets


class Widening(nn.Module):
    """A depthwise convolution with two outputs per channel on the stream (FastViT-MCI's
    downsampling), between residual blocks; ``k`` is its kernel, the input size the grid it sees."""

    def __init__(self, k=3, stride=1):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.block1 = nn.Sequential(nn.Conv2d(8, 16, 1), nn.GELU(), nn.Conv2d(16, 8, 1))
        self.widen = nn.Sequential(nn.Conv2d(8, 16, k, stride=stride, padding=k // 2, groups=8),
                                   nn.BatchNorm2d(16), nn.GELU())
        self.block2 = nn.Sequential(nn.Conv2d(16, 32, 1), nn.GELU(), nn.Conv2d(32, 16, 1))

    def forward(self, x):
        x = self.stem(x)
        x = x + self.block1(x)
        x = self.widen(x)
        x = x + self.block2(x)
        return x.mean((2, 3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("size,how", [(24, "convolution"), (8, "dense map")])
def test_depthwise_widening_on_the_stream_is_exact(size, how, dtype):
    """On a 12x12 grid the widening runs as convolutions, one per output of a channel (the split
    oneDNN computes fast); on a 4x4 grid, no larger than its 5x5 kernel, through its dense map."""
    torch.manual_seed(0)
    model = Widening(k=3 if how == "convolution" else 5).eval()
    jitter_(model, scale=0.3, seed=3)
    model = model.to(dtype)
    x = images((3, size, size), batch=2, dtype=dtype, seed=4)
    dm = fxdecomp.decompose(model, "block", input_size=(3, size, size), linearize=True)
    with torch.no_grad():
        err = rel_err(dm(x).total(), model(x))
        block1 = dm(x)["block1"]
        # the first block's contribution alone, computed independently: its value carried
        # through the frozen widening (the GELU's gate at this input) and the mean
        h = model.stem(x)
        v = model.block1(h) - model.block1[2].bias[:, None, None]  # its output bias is a component of its own
        conv, bn, _ = model.widen
        pre = bn(conv(h + model.block1(h)))
        gate = torch.nn.functional.gelu(pre) / pre
        lin = bn.weight[:, None, None] / (bn.running_var[:, None, None] + bn.eps).sqrt()
        want = (gate * lin * torch.nn.functional.conv2d(v, conv.weight, None, conv.stride, conv.padding,
                                                          conv.dilation, conv.groups)).mean((2, 3))
    assert err <= bound(dtype), err
    assert rel_err(block1, want) <= bound(dtype) * 10
    # the stem's convolution of the image is the embedding's; the widening's are split in two
    widening = [n for n in dm.graph_module.graph.nodes if n.target is kernels.conv_apply and n.args[-1] == 2]
    assert bool(widening) == (how == "convolution")
