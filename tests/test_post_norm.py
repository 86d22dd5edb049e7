"""Residual branches normalised at their end (``x + norm(attn(x))``, Swin V2's res-post-norm):
the attention reads the raw stream through linear ops only, yet it is a branch with heads
and tokens — never walked through, which would double every earlier component's terms
at each block."""
from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn

import fxdecomp
from conftest import bound, exact_at_every_granularity, images, jitter_, rel_err


class PostNormBlock(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.norm1 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.norm2 = nn.LayerNorm(d)

    def forward(self, x):
        x = x + self.norm1(self.attn(x, x, x, need_weights=False)[0])
        return x + self.norm2(self.mlp(x))


class PostNormViT(nn.Module):
    def __init__(self, d=16, heads=2, depth=4):
        super().__init__()
        self.embed = nn.Conv2d(3, d, 8, stride=8)
        self.blocks = nn.Sequential(*[PostNormBlock(d, heads) for _ in range(depth)])

    def forward(self, img):
        return self.blocks(self.embed(img).flatten(2).transpose(1, 2)).mean(1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_post_norm_attention_is_a_branch_with_heads(dtype):
    torch.manual_seed(0)
    model = jitter_(PostNormViT().eval(), scale=0.2).to(dtype)
    _, outs = exact_at_every_granularity(model, images((3, 32, 32), batch=2, dtype=dtype))
    block = [c for c in outs["block"].components if c.kind != "bias"]
    assert [c.kind for c in block].count("attn") == 4 and [c.kind for c in block].count("mlp") == 4
    heads = [c for c in outs["head"].components if c.kind == "attn"]
    assert len(heads) == 4 * 2 and {c.head for c in heads} == {0, 1}
    tokens = [c for c in outs["token"].components if c.kind == "attn"]
    assert len(tokens) == 4 * 2 * 16


def test_swin_v2_res_post_norm():
    torch.manual_seed(0)
    model = timm.create_model("swinv2_tiny_window8_256", pretrained=False, num_classes=0, img_size=32,
                              window_size=4, embed_dim=16, depths=(2, 2), num_heads=(1, 2)).eval()
    jitter_(model, scale=0.02)
    x = images((3, 32, 32), batch=2)
    with torch.no_grad():
        ref = model(x)
        dm = fxdecomp.decompose(model, "head", input_size=(3, 32, 32))
        assert rel_err(dm(x).total(), ref) <= bound(torch.float32)
    heads = [c for c in dm.components if c.kind == "attn"]
    assert len(heads) == 2 * 1 + 2 * 2  # a component per head, per block
