"""A residual architecture that exists only in this file, with names nothing in
fxdecomp could know: it decomposes exactly because nothing depends on names.

"Braid": a conv stem, two learned memory tokens, blocks with two parallel
branches from one custom RMS norm (multi-query attention written with einsum;
a depthwise-conv mixer on the token grid behind a sigmoid gate), per-channel
scales, a 2x2 token merge on the stream between stages, and an attention
pooling with a learned query on the stream, concatenated with the memory tokens.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from conftest import bound, exact_at_every_granularity, images, jitter_


class Rms(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.gain


class MultiQuery(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads, self.hd = heads, d // heads
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * self.hd)
        self.out = nn.Linear(d, d, bias=False)

    def forward(self, x):
        b, n, d = x.shape
        q = self.q(x).view(b, n, self.heads, self.hd)
        k, v = self.kv(x).chunk(2, dim=-1)
        w = torch.einsum("bnhe,bme->bhnm", q, k).mul(self.hd ** -0.5).softmax(-1)
        y = torch.einsum("bhnm,bme->bnhe", w, v)
        return self.out(y.reshape(b, n, d))


class GridGate(nn.Module):
    def __init__(self, d, side, memory):
        super().__init__()
        self.side, self.memory = side, memory
        self.dw = nn.Conv2d(d, d, 3, padding=1, groups=d)
        self.gate = nn.Linear(d, d)

    def forward(self, x):
        b, n, d = x.shape
        mem, tok = x[:, :self.memory], x[:, self.memory:]
        grid = tok.transpose(1, 2).reshape(b, d, self.side, self.side)
        mixed = self.dw(grid).flatten(2).transpose(1, 2)
        mixed = mixed * torch.sigmoid(self.gate(tok))
        return torch.cat([torch.zeros_like(mem), mixed], dim=1)


class Strand(nn.Module):
    def __init__(self, d, heads, side, memory):
        super().__init__()
        self.norm = Rms(d)
        self.talk = MultiQuery(d, heads)
        self.weave = GridGate(d, side, memory)
        self.s_talk = nn.Parameter(torch.full((d,), 0.5))
        self.s_weave = nn.Parameter(torch.full((d,), 0.5))

    def forward(self, x):
        h = self.norm(x)
        return x + self.s_talk * self.talk(h) + self.s_weave * self.weave(h)


class Merge(nn.Module):
    """2x2 token merge of the grid tokens (memory tokens pass through a linear map)."""

    def __init__(self, d, side, memory):
        super().__init__()
        self.side, self.memory = side, memory
        self.norm = nn.LayerNorm(4 * d)
        self.down = nn.Linear(4 * d, 2 * d)
        self.widen = nn.Linear(d, 2 * d)

    def forward(self, x):
        b, n, d = x.shape
        mem, tok = x[:, :self.memory], x[:, self.memory:]
        s = self.side
        g = tok.reshape(b, s // 2, 2, s // 2, 2, d).permute(0, 1, 3, 2, 4, 5).reshape(b, (s // 2) ** 2, 4 * d)
        return torch.cat([self.widen(mem), self.down(self.norm(g))], dim=1)


class Braid(nn.Module):
    def __init__(self, d=8, heads=2, side=8, memory=2):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, d, 3, stride=2, padding=1), nn.BatchNorm2d(d), nn.Hardswish())
        self.memory = nn.Parameter(torch.randn(1, memory, d))
        self.first = nn.ModuleList([Strand(d, heads, side, memory), Strand(d, heads, side, memory)])
        self.merge = Merge(d, side, memory)
        self.second = Strand(2 * d, 2 * heads, side // 2, memory)
        self.query = nn.Parameter(torch.randn(1, 1, 2 * d))
        self.pool_kv = nn.Linear(2 * d, 4 * d)
        self.readout = nn.Linear(4 * d, 5)

    def forward(self, img):
        x = self.stem(img).flatten(2).transpose(1, 2)
        x = torch.cat([self.memory.expand(x.shape[0], -1, -1), x], dim=1)
        for strand in self.first:
            x = strand(x)
        x = self.second(self.merge(x))
        k, v = self.pool_kv(x).chunk(2, dim=-1)
        w = torch.softmax(self.query @ k.transpose(1, 2) / k.shape[-1] ** 0.5, dim=-1)
        pooled = (w @ v).squeeze(1)
        return self.readout(torch.cat([pooled, x[:, : self.memory.shape[1]].mean(1)], dim=-1))


def braid(seed=0):
    torch.manual_seed(seed)
    m = Braid().eval()
    jitter_(m, scale=0.1, seed=seed)
    m.stem[1].running_mean.uniform_(-0.3, 0.3)
    m.stem[1].running_var.uniform_(0.5, 1.5)
    return m


def test_braid_decomposes_exactly_at_every_granularity():
    for dtype in (torch.float32, torch.float64):
        model = braid().to(dtype)
        ref, outs = exact_at_every_granularity(model, images((3, 16, 16), batch=3, dtype=dtype))
        block = outs["block"].components
        # the stem (with its nonlinearity) is the embedding; each strand has two branches
        assert [c.kind for c in block].count("embed") == 1
        branches = {c.module for c in block if c.kind in ("attn", "mlp", "conv")}
        assert branches == {"first.0.talk", "first.0.weave", "first.1.talk", "first.1.weave",
                            "second.talk", "second.weave"}, branches
        assert {c.kind for c in block if c.module.endswith("weave")} == {"conv"}
        # multi-query attention: heads of the query, source tokens on the grid or memory slots
        tokens = [c for c in outs["token"].components if c.module == "first.0.talk"]
        assert {c.head for c in tokens} == {0, 1}
        assert {c.prefix for c in tokens if c.prefix} == {"memory[0]", "memory[1]"}
        grid = {(c.row, c.col) for c in tokens if c.row is not None}
        assert grid == {(r, c) for r in range(8) for c in range(8)}
        merged = [c for c in outs["token"].components if c.module == "second.talk"]
        assert len(merged) == 4 * (2 + 16) and {c.prefix for c in merged if c.prefix} == {"memory[0]", "memory[1]"}
        # a merged token sits on the 4x4 grid of 2x2 blocks it was merged from
        assert all((c.row, c.col) == divmod(c.token - 2, 4) for c in merged if c.prefix is None)
        tol = dict(rtol=0, atol=bound(dtype) * float(ref.abs().max()) * 10)
        torch.testing.assert_close(outs["token"].group("branch").contributions, outs["block"].contributions, **tol)
