"""Rules for ops met in the last held-out architectures: ``unfold`` (TNT folds the batch into
its patches), ``stack`` (CoaT stacks its stages' class tokens), and where the batch is lost
when an op gives the output no batch axis."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import fxdecomp
from conftest import exact_at_every_granularity, images, jitter_


def small_tnt(global_pool="avg"):
    from timm.models.tnt import TNT

    torch.manual_seed(0)
    model = TNT(img_size=32, patch_size=16, embed_dim=32, inner_dim=8, depth=1, num_heads_inner=2,
                num_heads_outer=2, num_classes=0, global_pool=global_pool).eval()
    return jitter_(model, scale=0.2)


@pytest.mark.slow  # torch.export traces TNT three times (its batch folding defeats a dynamic batch)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_unfold_keeps_the_batch_folded_into_patches(dtype):
    """TNT's pixel-level transformer runs on [batch·patches, pixels, C]: the batch atom survives
    the unfold and the fold, so the pixel attention is split by head, patch (window) and pixel."""
    model = small_tnt().to(dtype)
    grans = ("block", "head", "token") if dtype == torch.float32 else ("token",)
    _, outs = exact_at_every_granularity(model, images((3, 32, 32), batch=2, dtype=dtype), grans)
    inner = [c for c in outs["token"].components if c.module == "blocks.0.attn_in"]
    assert inner and all(c.split == "head+window+token" for c in inner)
    assert {c.head for c in inner} == {0, 1}
    outer = [c for c in outs["token"].components if c.module == "blocks.0.attn_out" and c.head == 0]
    assert [c.prefix for c in outer][0] == "cls_token"
    assert {(c.row, c.col) for c in outer[1:]} == {(0, 0), (0, 1), (1, 0), (1, 1)}


class Stacked(nn.Module):
    """Three stages' class tokens stacked on a new axis and mixed by a 1x1 convolution over it,
    as CoaT's aggregate head does."""

    def __init__(self, d=8):
        super().__init__()
        self.embed = nn.Conv2d(3, d, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, d))
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))
                                    for _ in range(3))
        self.aggregate = nn.Conv1d(3, 1, 1)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        outs = []
        for blk in self.blocks:
            x = x + blk(x)
            outs.append(x[:, 0])
        return self.aggregate(torch.stack(outs, dim=1)).squeeze(1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_stack_places_each_input_on_its_own_index(dtype):
    torch.manual_seed(0)
    model = jitter_(Stacked().eval(), scale=0.2).to(dtype)
    _, outs = exact_at_every_granularity(model, images((3, 16, 16), dtype=dtype), granularities=("block",))
    assert [c.kind for c in outs["block"].components].count("mlp") == 3
    # the last block reaches the output only through the stack's last slot
    x = images((3, 16, 16), dtype=dtype)
    with torch.no_grad():
        hidden = model.embed(x).flatten(2).transpose(1, 2)
        hidden = torch.cat([model.cls.expand(x.shape[0], -1, -1), hidden], dim=1)
        for blk in model.blocks[:2]:
            hidden = hidden + blk(hidden)
        last = model.blocks[2](hidden)[:, 0] - model.blocks[2][3].bias
        want = model.aggregate.weight[0, 2, 0] * last
    got = outs["block"]["blocks.2"]
    torch.testing.assert_close(got, want, rtol=1e-10 if dtype == torch.float64 else 1e-5, atol=0)


@torch.library.custom_op("fxdtest::fold_batch", mutates_args=())
def fold_batch(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(1, -1).tanh()


@fold_batch.register_fake
def _(x):
    return x.new_empty((1, x.numel()))


class FoldsItsBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(12, 4)

    def forward(self, x):
        return fold_batch(self.lin(x.flatten(1)[:, :12]))


def test_an_output_without_the_batch_names_where_it_was_lost():
    op = torch.ops.fxdtest.fold_batch.default
    fxdecomp.register_rule(op, kind="nonlinear")
    try:
        with pytest.raises(fxdecomp.UnsupportedOpError) as info:
            fxdecomp.decompose(FoldsItsBatch().eval(), input_size=(3, 2, 2))
    finally:
        fxdecomp.unregister_rule(op)
    msg = str(info.value)
    assert "cannot be traced back to the batch" in msg and "node 'fold_batch'" in msg
    assert "gives its output no batch axis" in msg
