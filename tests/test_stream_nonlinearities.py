"""Nonlinear ops on the residual stream: collapse reported, or linearised on request,
and a nonlinear stem that is simply the embedding."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

import fxdecomp
from conftest import bound, images, jitter_, rel_err


class Tower(nn.Module):
    """conv stem with an activation, residual MLP blocks, then an activation on the stream
    (``act``) and a pre-logits layer with tanh, as in MaxViT's and EfficientNet's heads."""

    def __init__(self, act: nn.Module, depth: int = 2, width: int = 8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 4, stride=4), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))
            for _ in range(depth))
        self.act = act
        self.pre_logits = nn.Sequential(nn.Linear(width, width), nn.Tanh())

    def forward(self, x):
        x = self.stem(x).flatten(2).transpose(1, 2)
        for blk in self.blocks:
            x = x + blk(x)
        x = self.act(x)
        return self.pre_logits(x.mean(1))


def tower(act, seed=0):
    torch.manual_seed(seed)
    m = Tower(act).eval()
    jitter_(m, scale=0.3, seed=seed)
    m.stem[1].running_mean.uniform_(-0.5, 0.5)
    m.stem[1].running_var.uniform_(0.5, 1.5)
    return m


def test_collapse_is_reported_not_silent():
    model = tower(nn.Identity())
    with pytest.warns(fxdecomp.CollapseWarning, match="linearize=True"):
        dm = fxdecomp.decompose(model, input_size=(3, 16, 16))
    assert dm.collapsed
    assert [c.kind for c in dm.components].count("collapsed") == 1
    assert "collapsed" in dm.summary()


@pytest.mark.parametrize("act", [nn.Identity(), nn.GELU(), nn.ReLU(), nn.SiLU(), nn.Sigmoid(), nn.Softplus()],
                         ids=["none", "gelu", "relu", "silu", "sigmoid", "softplus"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_linearised_stream_is_exact(act, dtype):
    model = tower(act).to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error", fxdecomp.CollapseWarning)
        dm = fxdecomp.decompose(model, "block", input_size=(3, 16, 16), linearize=True)
    x = images(dm, batch=3, dtype=dtype)
    with torch.no_grad():
        out = dm(x)
        assert rel_err(out.total(), model(x)) <= bound(dtype)
    assert not dm.collapsed and not dm.notes
    kinds = [c.kind for c in dm.components]
    assert kinds.count("mlp") == 2 and kinds.count("embed") == 1
    names = " ".join(dm.linearised)
    assert "pre_logits" in names
    # the stem's ReLU comes before any branch: it is part of the embedding, never linearised
    assert "stem" not in names
    offsets = [c.name for c in dm.components if c.name.endswith("(0)")]
    if isinstance(act, (nn.Sigmoid, nn.Softplus)):  # f(0) != 0: the rest of f at 0 is its own term
        assert offsets == [f"act.{'sigmoid' if isinstance(act, nn.Sigmoid) else 'softplus'}(0)"]
    else:
        assert offsets == []


def test_linearised_gate_is_exact_where_the_input_is_zero():
    model = tower(nn.Sigmoid())
    dm = fxdecomp.decompose(model, "block", input_size=(3, 16, 16), linearize=True)
    x = torch.zeros(2, 3, 16, 16)  # the stream is then exactly the biases: many exact zeros after ReLU
    with torch.no_grad():
        out = dm(x)
        assert rel_err(out.total(), model(x)) <= 1e-6


def test_nonlinear_stem_is_the_embedding_without_warning():
    model = tower(nn.Identity())
    model.pre_logits = nn.Linear(8, 8)  # nothing nonlinear on the stream after the blocks
    with warnings.catch_warnings():
        warnings.simplefilter("error", fxdecomp.CollapseWarning)
        dm = fxdecomp.decompose(model, input_size=(3, 16, 16))
    x = images(dm)
    with torch.no_grad():
        assert rel_err(dm(x).total(), model(x)) <= 1e-5
    embed = [c for c in dm.components if c.kind == "embed"]
    assert len(embed) == 1 and not dm.collapsed and dm.linearised == []


def test_class_token_readout_lists_only_direct_paths():
    """The patch embedding reaches a class-token output only through attention (whose token
    components carry it): it has no direct contribution, so it is not a component."""
    from conftest import small_vit

    cls_model = small_vit(global_pool="token")
    avg_model = small_vit(global_pool="avg")
    cls_kinds = {c.kind for c in fxdecomp.decompose(cls_model).components}
    avg_kinds = {c.kind for c in fxdecomp.decompose(avg_model).components}
    assert "embed" not in cls_kinds and "embed" in avg_kinds
    names = fxdecomp.decompose(cls_model).components.names
    assert "cls_token" in names and "patch_embed.proj.bias" not in names


class LinearNorm(nn.Module):
    """Linear then BatchNorm over flattened tokens, shaped back with ``reshape_as`` of the
    linear's output (as in LeViT): a use of that output for its shape only."""

    def __init__(self, d):
        super().__init__()
        self.linear, self.bn = nn.Linear(d, d), nn.BatchNorm1d(d)

    def forward(self, x):
        y = self.linear(x)
        return self.bn(y.flatten(0, 1)).reshape_as(y)


def test_a_shape_only_use_does_not_hide_a_collapse():
    """The stream runs through ``LinearNorm`` and then an activation: that must be reported
    as a collapse (or linearised), not turned silently into one 'branch' component."""
    model = tower(nn.Identity())
    model.act = nn.Sequential(LinearNorm(8), nn.Hardswish(), LinearNorm(8))
    model.pre_logits = nn.Linear(8, 8)
    jitter_(model.eval(), scale=0.3)
    with pytest.warns(fxdecomp.CollapseWarning, match="hardswish"):
        collapsed = fxdecomp.decompose(model, "block", input_size=(3, 16, 16))
    assert collapsed.collapsed
    dm = fxdecomp.decompose(model, "block", input_size=(3, 16, 16), linearize=True)
    x = images(dm)
    with torch.no_grad():
        assert rel_err(dm(x).total(), model(x)) <= 1e-5
    assert any("hardswish" in op for op in dm.linearised)
    assert [c.kind for c in dm.components].count("mlp") == 2  # the two residual blocks


class Hidden(nn.Module):
    """A residual block, then a stage change with no skip around it, then another residual
    block. ``stage``: ``"parallel"`` (two nonlinear paths from the stream joined, neither a skip)
    or ``"max"`` (Hiera's shortcut: a max over query-stride groups of ``proj(norm(x))``, plus an
    MLP of ``norm(x)`` pooled the same way)."""

    def __init__(self, stage: str, width: int = 8):
        super().__init__()
        self.stage = stage
        self.embed = nn.Conv2d(3, width, 4, stride=4)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))
            for _ in range(2))
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, width)
        self.mix = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)  # [B, 16, C]
        x = x + self.blocks[0](x)
        n = self.norm(x)
        if self.stage == "parallel":
            x = torch.relu(self.proj(n)) + self.mix(n)
        else:
            b, t, c = n.shape
            x = self.proj(n).view(b, 4, t // 4, c).max(dim=1).values + \
                self.mix(n).view(b, 4, t // 4, c).amax(dim=1)
        x = x + self.blocks[1](x)
        return x.mean(1)


def hidden(stage: str, dtype=torch.float32):
    torch.manual_seed(0)
    return jitter_(Hidden(stage).eval(), scale=0.3).to(dtype)


@pytest.mark.parametrize("stage", ["parallel", "max"])
def test_a_stage_without_a_skip_is_a_reported_collapse(stage):
    """Every path from the stream through the stage change is nonlinear: what came before it
    (the embedding, blocks.0) reaches the output only inside the stage's leaves. That is a
    collapse and it is said so, with the fix where there is one."""
    model = hidden(stage)
    with pytest.warns(fxdecomp.CollapseWarning, match="no skip path") as caught:
        dm = fxdecomp.decompose(model, "block", input_size=(3, 16, 16))
    note = next(str(w.message) for w in caught if issubclass(w.category, fxdecomp.CollapseWarning))
    assert note in dm.notes and "'norm'" in note
    assert ("linearize=True" in note) == (stage == "max")
    x = images(dm)
    with torch.no_grad():
        assert rel_err(dm(x).total(), model(x)) <= 1e-5
    modules = {c.module for c in dm.components}
    assert not any(m.startswith(("embed", "blocks.0")) for m in modules)
    # the stage's two nonlinear leaves hold what the stream held: both are 'collapsed'
    assert [c.kind for c in dm.components].count("collapsed") == 2 and dm.collapsed
    assert "(max)" in note if stage == "max" else "(relu)" in note


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_a_max_shortcut_is_decomposed_with_its_selection_frozen(dtype):
    """With linearize=True the max's selection is frozen like an attention weight: the stage
    change is walked through and every earlier component is back, exact at that input."""
    model = hidden("max", dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error", fxdecomp.CollapseWarning)
        dm = fxdecomp.decompose(model, "block", input_size=(3, 16, 16), linearize=True)
    x = images(dm, dtype=dtype)
    with torch.no_grad():
        out = dm(x)
        assert rel_err(out.total(), model(x)) <= bound(dtype)
    kinds = [c.kind for c in dm.components]
    assert kinds.count("embed") == 1 and kinds.count("mlp") == 3 and not dm.collapsed
    # one shortcut max; the MLP's amax is inside a branch, computed from actual values
    assert len(dm.linearised) == 1 and dm.linearised[0].endswith(" (max)")


def test_the_frozen_selection_is_the_max_of_the_embedding_path():
    """One component against an independent computation: with only the embedding (no blocks,
    no constants), the shortcut's contribution is the projected, centred and scaled embedding
    at the element the max picked for the whole input."""

    class Shortcut(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Conv2d(3, 8, 4, stride=4, bias=False)
            self.norm = nn.LayerNorm(8, elementwise_affine=False)
            self.proj = nn.Linear(8, 8, bias=False)

        def forward(self, x):
            n = self.norm(self.embed(x).flatten(2).transpose(1, 2))
            b, t, c = n.shape
            return self.proj(n).view(b, 4, t // 4, c).max(dim=1).values.mean(1)

    torch.manual_seed(0)
    model = jitter_(Shortcut().eval()).double()
    dm = fxdecomp.decompose(model, "block", input_size=(3, 16, 16), linearize=True)
    x = images(dm, dtype=torch.float64)
    with torch.no_grad():
        out = dm(x)
        e = model.embed(x).flatten(2).transpose(1, 2)
        n = model.norm(e)
        rstd = 1 / (e.var(-1, unbiased=False, keepdim=True) + model.norm.eps).sqrt()
        p = model.proj((e - e.mean(-1, keepdim=True)) * rstd).view(3, 4, 4, 8)
        pick = model.proj(n).view(3, 4, 4, 8).argmax(dim=1, keepdim=True)
        want = p.gather(1, pick).squeeze(1).mean(1)
    assert out.components.names == ["embed"]
    torch.testing.assert_close(out["embed"], want, rtol=0, atol=1e-12)
