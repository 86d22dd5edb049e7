"""Property tests over randomly drawn ViT configurations.

Each drawn model is decomposed at every granularity in float32 and float64;
the sum of components must equal the model's own output, and finer
decompositions must regroup exactly into coarser ones.
"""
from __future__ import annotations

import copy

import torch
from hypothesis import given
from hypothesis import strategies as st

import fxdecomp
from conftest import assert_regroups, bound, images, rel_err, small_vit


@st.composite
def vit_configs(draw):
    heads = draw(st.integers(1, 4))
    patch = draw(st.sampled_from([4, 8]))
    class_token = draw(st.booleans())
    cfg = dict(
        patch_size=patch,
        img_size=patch * draw(st.integers(2, 4)),
        num_heads=heads,
        embed_dim=heads * draw(st.sampled_from([4, 8])),
        depth=draw(st.integers(1, 3)),
        mlp_ratio=draw(st.sampled_from([1.0, 2.0])),
        qkv_bias=draw(st.booleans()),
        class_token=class_token,
        global_pool=draw(st.sampled_from(["token", "avg"])) if class_token else "avg",
        reg_tokens=draw(st.integers(0, 2)),
        init_values=draw(st.sampled_from([None, 0.5])),
        no_embed_class=draw(st.booleans()),
        pre_norm=draw(st.booleans()),
        num_classes=draw(st.sampled_from([0, 5])),
    )
    fused = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    return cfg, fused, seed


def build(cfg, fused, seed):
    m = small_vit(seed=seed, **cfg)
    for blk in m.blocks:
        blk.attn.fused_attn = fused
    return m


@given(vit_configs())
def test_reconstruction_and_regrouping(drawn):
    cfg, fused, seed = drawn
    base = build(cfg, fused, seed)
    for dtype in (torch.float32, torch.float64):
        model = copy.deepcopy(base).to(dtype)
        x = images((3, cfg["img_size"], cfg["img_size"]), batch=3, dtype=dtype, seed=seed)
        with torch.no_grad():
            ref = model(x)
            assert torch.isfinite(ref).all()
            outs = {g: fxdecomp.decompose(model, g)(x) for g in ("token", "head", "block")}
        for g, out in outs.items():
            err = rel_err(out.total(), ref)
            assert err <= bound(dtype), f"{g} {dtype}: relative error {err:.3g} ({cfg}, fused={fused})"
        assert_regroups(outs, ref, dtype)


@given(vit_configs(), st.sampled_from(["head", "token"]))
def test_fine_granularity_only_in_chosen_layers(drawn, granularity):
    cfg, fused, seed = drawn
    model = build(cfg, fused, seed)
    dm = fxdecomp.decompose(model, granularity, layers=[0])
    x = images(dm, batch=2, seed=seed)
    with torch.no_grad():
        out = dm(x)
        ref = model(x)
    assert rel_err(out.total(), ref) <= 1e-5
    attn = [c for c in dm.components if c.kind == "attn"]
    assert attn
    for c in attn:
        if c.layer != 0:
            assert c.head is None and c.token is None, c
        else:
            assert (c.head is not None) == (cfg["num_heads"] > 1), c
            assert (c.token is not None) == (granularity == "token"), c
