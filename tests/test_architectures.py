"""The architectures the compiler must handle exactly, with random weights.

Full configurations (depth, width, heads) with small images where the model
allows it, every granularity, float32 and float64.
"""
from __future__ import annotations

import copy
import warnings

import open_clip
import pytest
import timm
import torch

import fxdecomp
from conftest import bound, images, jitter_, rel_err


def _timm(name, **kw):
    def make():
        torch.manual_seed(0)
        return jitter_(timm.create_model(name, pretrained=False, num_classes=0, **kw).eval(), scale=0.02)
    return make


def _unfused():
    m = _timm("vit_small_patch16_224", img_size=64)()
    for blk in m.blocks:
        blk.attn.fused_attn = False
    return m


def _open_clip():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        return jitter_(open_clip.create_model("ViT-B-16", pretrained=None).visual.eval(), scale=0.02)


ARCHS = {
    "vit_base_patch16_224": _timm("vit_base_patch16_224", img_size=64),
    "deit_base_patch16_224": _timm("deit_base_patch16_224", img_size=64),
    "deit3_small_patch16_224": _timm("deit3_small_patch16_224", img_size=64),
    "vit_base_patch16_224.dino": _timm("vit_base_patch16_224.dino", img_size=64),
    "vit_base_patch14_dinov2": _timm("vit_base_patch14_dinov2", img_size=56),
    "vit_base_patch14_reg4_dinov2": _timm("vit_base_patch14_reg4_dinov2", img_size=56),
    "vit_avgpool": _timm("vit_base_patch16_224", img_size=64, global_pool="avg", class_token=False),
    "vit_unfused_attention": _unfused,
    "open_clip_ViT-B-16": _open_clip,
}

_CACHE: dict = {}


def model_for(name: str, dtype: torch.dtype):
    if name not in _CACHE:
        _CACHE.clear()
        _CACHE[name] = ARCHS[name]()
    return copy.deepcopy(_CACHE[name]).to(dtype)


@pytest.mark.parametrize("name", list(ARCHS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_exact_at_every_granularity(name, dtype):
    model = model_for(name, dtype)
    x = images(fxdecomp.models_registry.input_size_of(model), batch=2, dtype=dtype)
    with torch.no_grad():
        ref = model(x)
        sizes = {}
        for g in ("block", "head", "token"):
            dm = fxdecomp.decompose(model, g)
            out = dm(x)
            err = rel_err(out.total(), ref)
            assert err <= bound(dtype), f"{name} {g}: relative error {err:.3g}"
            sizes[g] = len(dm.components)
            kinds = {c.kind for c in dm.components}
            # a class-token readout has no direct path from the patch embedding
            assert {"attn", "mlp", "bias"} <= kinds and ("embed" in kinds) == (name == "vit_avgpool")
            assert not dm.notes, dm.notes  # nothing collapsed
    depth = len([c for c in dm.components if c.kind == "mlp"])
    assert depth == 12
    assert sizes["block"] < sizes["head"] < sizes["token"]


def test_open_clip_heads_and_tokens_are_labelled():
    model = model_for("open_clip_ViT-B-16", torch.float32)
    dm = fxdecomp.decompose(model, "token", layers=[11])
    attn = [c for c in dm.components if c.kind == "attn" and c.layer == 11]
    grid = model.grid_size
    assert len(attn) == 12 * (1 + grid[0] * grid[1])
    cls = [c for c in attn if c.prefix is not None]
    assert len(cls) == 12 and all(c.token == 0 and c.prefix == "class_embedding" for c in cls)
    last = [c for c in attn if c.head == 11 and c.token == grid[0] * grid[1]][0]
    assert (last.row, last.col) == (grid[0] - 1, grid[1] - 1)
    assert all(c.module == "transformer.resblocks.11.attn" for c in attn)


def test_registers_are_named():
    model = model_for("vit_base_patch14_reg4_dinov2", torch.float32)
    dm = fxdecomp.decompose(model, "token", layers=[0])
    prefixes = {c.prefix for c in dm.components if c.layer == 0 and c.kind == "attn"}
    assert prefixes == {None, "cls_token", "reg_token[0]", "reg_token[1]", "reg_token[2]", "reg_token[3]"}


def _open_clip_named(arch):
    def make():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.manual_seed(0)
            return jitter_(open_clip.create_model(arch, pretrained=None).visual.eval(), scale=0.02)
    return make


#: name -> (factory, linearize, kinds every granularity must have)
BEYOND = {
    "swin_tiny_patch4_window7_224": (_timm("swin_tiny_patch4_window7_224"), False, {"attn", "mlp", "embed"}),
    "maxvit_tiny_tf_224@128": (_timm("maxvit_tiny_tf_224", img_size=128), True,
                               {"attn", "mlp", "conv", "embed"}),
    "eva02_tiny_patch14_224": (_timm("eva02_tiny_patch14_224", img_size=56), False, {"attn", "mlp"}),
    "beit_base_patch16_224": (_timm("beit_base_patch16_224", img_size=64), False, {"attn", "mlp", "embed"}),
    "cait_xxs24_224": (_timm("cait_xxs24_224", img_size=64), False, {"attn", "mlp"}),
    "deit_tiny_distilled_patch16_224": (_timm("deit_tiny_distilled_patch16_224", img_size=64), False,
                                        {"attn", "mlp"}),
    "pit_ti_224": (_timm("pit_ti_224"), False, {"attn", "mlp"}),
    "xcit_tiny_12_p16_224": (_timm("xcit_tiny_12_p16_224", img_size=64), False, {"attn", "mlp"}),
    "convnext_nano@64": (_timm("convnext_nano"), False, {"conv", "embed"}),
    "resnet50@64": (_timm("resnet50"), True, {"conv", "embed"}),
    "poolformer_s12@64": (_timm("poolformer_s12"), False, {"conv", "mlp", "embed"}),
    "open_clip_ViT-B-32": (_open_clip_named("ViT-B-32"), False, {"attn", "mlp"}),
    # batch folded into patches (unfold), stacked class tokens, parallel convolutions on the stream
    "tnt_s_patch16_224@64": (_timm("tnt_s_patch16_224", img_size=64), False, {"attn", "mlp"}),
    "coat_tiny": (_timm("coat_tiny"), False, {"attn", "mlp", "conv"}),
    "fastvit_t8@64": (_timm("fastvit_t8"), True, {"conv", "embed"}),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BEYOND))
def test_beyond_plain_vits(name):
    """Every granularity exact in float32, the finest in float64; nothing collapsed."""
    make, linearize, kinds = BEYOND[name]
    base = make()
    size = int(name.split("@")[1]) if "@" in name else None  # CNNs take any size; keep them small
    shape = (3, size, size) if size else fxdecomp.models_registry.input_size_of(base)
    x32 = images(shape, batch=2)
    for dtype, grans in ((torch.float32, ("block", "head", "token")), (torch.float64, ("token",))):
        model = copy.deepcopy(base).to(dtype)
        x = x32.to(dtype)
        with torch.no_grad():
            ref = model(x)
            for g in grans:
                with warnings.catch_warnings():
                    warnings.simplefilter("error", fxdecomp.CollapseWarning)
                    dm = fxdecomp.decompose(model, g, input_size=shape, linearize=linearize)
                err = rel_err(dm(x).total(), ref)
                assert err <= bound(dtype), f"{name} {g} {dtype}: relative error {err:.3g}"
                assert kinds <= {c.kind for c in dm.components}, (g, {c.kind for c in dm.components})
                assert not dm.collapsed


def test_windowed_and_grid_tokens_carry_their_grid_position():
    """MaxViT's block (window) and grid attention split tokens of one 2-D grid in two
    different ways; both must still name every source token's (row, col)."""
    make, _, _ = BEYOND["maxvit_tiny_tf_224@128"]
    model = make()
    dm = fxdecomp.decompose(model, "token", layers=[1, 2], linearize=True)
    for module in ("stages.0.blocks.0.attn_block.attn", "stages.0.blocks.0.attn_grid.attn"):
        tokens = [c for c in dm.components if c.module == module]
        heads = {c.head for c in tokens}
        cells = {(c.head, c.row, c.col) for c in tokens}
        assert len(cells) == len(tokens) == len(heads) * 32 * 32, module
        assert all("window" in c.split for c in tokens)
