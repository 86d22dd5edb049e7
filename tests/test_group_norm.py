"""GroupNorm with frozen per-sample group statistics: exact on the stream, and a residual
branch that is affine once its norm is frozen (PoolFormer's ``pool(norm(x)) - norm(x)``)
stays one component instead of doubling every earlier component's terms."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import fxdecomp
from conftest import bound, images, jitter_, rel_err


class GroupNet(nn.Module):
    """A conv stem, a residual conv block, GroupNorm on the stream, a pooling token mixer
    and a residual MLP, then a mean over positions."""

    def __init__(self, groups: int, width: int = 16, depth: int = 3):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 4, stride=4)
        self.conv_norm = nn.GroupNorm(groups, width)
        self.conv = nn.Conv2d(width, width, 3, padding=1)
        self.stream_norm = nn.GroupNorm(groups, width)
        self.mix_norms = nn.ModuleList(nn.GroupNorm(groups, width) for _ in range(depth))
        self.pool = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        self.mlp_norm = nn.GroupNorm(groups, width)
        self.mlp = nn.Sequential(nn.Conv2d(width, 2 * width, 1), nn.GELU(), nn.Conv2d(2 * width, width, 1))

    def forward(self, x):
        x = self.stem(x)
        x = x + self.conv(torch.relu(self.conv_norm(x)))
        x = self.stream_norm(x)
        for norm in self.mix_norms:
            y = norm(x)
            x = x + 0.5 * (self.pool(y) - y)
        x = x + self.mlp(self.mlp_norm(x))
        return x.mean((2, 3))


@pytest.mark.parametrize("groups", [1, 4, 16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_group_norm_on_the_stream_is_exact(groups, dtype):
    torch.manual_seed(groups)
    model = jitter_(GroupNet(groups).eval(), scale=0.3, seed=groups).to(dtype)
    x = images((3, 32, 32), batch=3, dtype=dtype)
    with torch.no_grad():
        ref = model(x)
        for g in ("block", "token"):
            dm = fxdecomp.decompose(model, g, input_size=(3, 32, 32))
            err = rel_err(dm(x).total(), ref)
            assert err <= bound(dtype), (groups, g, err)
            assert not dm.collapsed


def test_affine_branches_behind_a_norm_are_components():
    """Each pooling mixer is one component (plus its bias terms): walking through them
    would have multiplied the terms of everything before by two per block."""
    model = jitter_(GroupNet(4).eval(), scale=0.3)
    dm = fxdecomp.decompose(model, "block", input_size=(3, 32, 32))
    branches = [c for c in dm.components if c.kind not in ("bias", "embed")]
    # conv block, three pooling mixers, the MLP
    assert len(branches) == 5, [c.name for c in dm.components]
    assert {c.module_type for c in dm.components if c.kind == "bias"} >= {"GroupNorm"}


class NativeGroupNorm(nn.GroupNorm):
    """GroupNorm through ``native_group_norm``, the form some exports lower it to."""

    def forward(self, x):
        n, c = x.shape[:2]
        return torch.ops.aten.native_group_norm.default(x, self.weight, self.bias, n, c, x[0, 0].numel(),
                                                        self.num_groups, self.eps)[0]


def test_native_group_norm_on_the_stream_is_exact():
    torch.manual_seed(1)
    model = GroupNet(4).eval()
    model.stream_norm = NativeGroupNorm(4, 16)
    jitter_(model, scale=0.3, seed=1)
    x = images((3, 32, 32), batch=2)
    dm = fxdecomp.decompose(model, "block", input_size=(3, 32, 32))
    with torch.no_grad():
        assert rel_err(dm(x).total(), model(x)) <= bound(torch.float32)
    assert "stream_norm.bias" in {c.name for c in dm.components}
