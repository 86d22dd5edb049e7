"""Property tests over randomly drawn hierarchical models: Swin (shifted windows,
patch merging, relative position bias) and MaxViT (MBConv with BatchNorm and
squeeze-excitation, block and grid attention, conv stem, tanh pre-logits).

Each drawn model is decomposed at every granularity in float32 and at the
finest in float64; the sum must equal the model's output, finer decompositions
must regroup into coarser ones, and every token component of windowed attention must carry its
source token's (row, col) on its stage's grid.
"""
from __future__ import annotations

import copy
import dataclasses

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from timm.models import maxxvit
from timm.models.swin_transformer import SwinTransformer

import fxdecomp
from conftest import assert_regroups, bound, images, jitter_, rel_err


@st.composite
def swin_configs(draw):
    stages = draw(st.integers(1, 3))
    window = draw(st.sampled_from([2, 4]))
    patch = draw(st.sampled_from([2, 4]))
    grid = window * 2 ** (stages - 1) * draw(st.integers(1, 2))
    heads = tuple(draw(st.integers(1, 2)) * 2 ** i for i in range(stages))
    cfg = dict(img_size=grid * patch, patch_size=patch, window_size=window,
               embed_dim=heads[0] * draw(st.sampled_from([4, 8])),
               depths=tuple(draw(st.integers(1, 2)) for _ in range(stages)), num_heads=heads,
               mlp_ratio=draw(st.sampled_from([1.0, 2.0])), qkv_bias=draw(st.booleans()),
               num_classes=draw(st.sampled_from([0, 3])))
    return cfg, draw(st.integers(0, 2**16))


@st.composite
def maxvit_configs(draw):
    stages = draw(st.integers(1, 2))
    part = draw(st.sampled_from([2, 4]))
    img = part * 2 ** (stages + 1) * draw(st.integers(1, 2))
    base = maxxvit.model_cfgs["maxvit_tiny_tf"]
    dim_head = draw(st.sampled_from([4, 8]))
    width = dim_head * draw(st.integers(1, 2))
    cfg = dataclasses.replace(
        base, embed_dim=tuple(width * 2 ** i for i in range(stages)),
        depths=tuple(draw(st.integers(1, 2)) for _ in range(stages)), stem_width=width,
        head_hidden_size=draw(st.sampled_from([None, width])),
        transformer_cfg=dataclasses.replace(base.transformer_cfg, dim_head=dim_head, window_size=(part, part),
                                            grid_size=(part, part)))
    return cfg, img, draw(st.integers(0, 2**16))


def _check(base: torch.nn.Module, seed: int, linearize: bool = False):
    """Exact at every granularity in float32 (and regrouping), at the finest in float64."""
    shape = fxdecomp.models_registry.input_size_of(base)
    for dtype, grans in ((torch.float32, ("token", "head", "block")), (torch.float64, ("token",))):
        model = copy.deepcopy(base).to(dtype)
        x = images(shape, batch=2, dtype=dtype, seed=seed)
        with torch.no_grad():
            ref = model(x)
            dms = {g: fxdecomp.decompose(model, g, linearize=linearize) for g in grans}
            outs = {g: dm(x) for g, dm in dms.items()}
        for g, out in outs.items():
            err = rel_err(out.total(), ref)
            assert err <= bound(dtype), f"{g} {dtype}: relative error {err:.3g}"
            assert not dms[g].collapsed
        if dtype == torch.float32:
            assert_regroups(outs, ref, dtype)
            found = dms
    return found


def _assert_tokens_on_grids(dm):
    tokens = [c for c in dm.components if c.kind == "attn"]
    assert tokens
    by_branch: dict = {}
    for c in tokens:
        assert c.token is not None and c.row is not None and c.col is not None, c
        assert "token" in c.split, c
        by_branch.setdefault(c.branch, set()).add((c.head, c.row, c.col))
    for cells in by_branch.values():  # every (head, row, col) of a stage's grid appears once
        rows = 1 + max(r for _, r, _ in cells)
        cols = 1 + max(c for _, _, c in cells)
        heads = {h for h, _, _ in cells}
        assert len(cells) == len(heads) * rows * cols


@given(swin_configs())
def test_swin_exact_and_labelled(drawn):
    cfg, seed = drawn
    torch.manual_seed(seed)
    model = jitter_(SwinTransformer(**cfg).eval(), scale=0.1, seed=seed)
    dms = _check(model, seed)
    _assert_tokens_on_grids(dms["token"])
    kinds = {c.kind for c in dms["block"].components}
    assert {"attn", "mlp", "bias", "embed"} <= kinds
    if cfg["img_size"] // cfg["patch_size"] > cfg["window_size"]:  # more than one window in stage 0
        assert any("window" in c.split for c in dms["token"].components if c.layer == 0 and c.kind == "attn")


@settings(max_examples=max(1, settings().max_examples // 3))  # each example compiles four MaxViTs
@given(maxvit_configs())
def test_maxvit_exact_and_labelled(drawn):
    cfg, img, seed = drawn
    torch.manual_seed(seed)
    model = jitter_(maxxvit.MaxxVit(cfg, img_size=img, num_classes=0).eval(), scale=0.05, seed=seed)
    dms = _check(model, seed, linearize=True)
    _assert_tokens_on_grids(dms["token"])
    kinds = {c.kind for c in dms["block"].components}
    assert {"attn", "mlp", "conv", "bias", "embed"} <= kinds
    tanh = [n for n in dms["block"].linearised if "tanh" in n]
    assert len(tanh) == (1 if cfg.head_hidden_size else 0)
