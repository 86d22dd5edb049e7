"""Convolutions as taps applied by gathering: the gather equals the dense 0/1 tap tensor
for every geometry, and linearised chains of strided, dilated, grouped and padded
convolutions on the stream decompose exactly through it."""
from __future__ import annotations

import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

import fxdecomp
from conftest import bound, images, jitter_, rel_err
from fxdecomp import kernels
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
@given(specs=specs, seed=st.integers(0, 2**16), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_linearised_conv_chains_are_exact(specs, seed, dtype):
    torch.manual_seed(seed)
    model = ConvChain(specs).eval()
    jitter_(model, scale=0.3, seed=seed)
    model = model.to(dtype)
    x = images((3, 24, 24), batch=2, dtype=dtype, seed=seed)
    dm = fxdecomp.decompose(model, "block", input_size=(3, 24, 24), linearize=True)
    with torch.no_grad():
        err = rel_err(dm(x).total(), model(x))
    assert err <= bound(dtype), (specs, dtype, err)
    # the first stage is part of the stem (no branch before it); later ones are on the stream
    if any(k > 1 or s > 1 for k, s, _, _ in specs[1:]):
        targets = {n.target for n in dm.graph_module.graph.nodes}
        assert kernels.tap_gather in targets  # the taps were gathered, not multiplied
