"""Every component checked on its own, against a computation that shares nothing with the
compiler: forward hooks catch what each residual branch (or head, or source token) adds to
the stream, and the frozen tail after it is written out by hand.

A sum can be right while a contribution is credited to the wrong component; these tests
would see that. The semantics checked (README, "Semantics"): a branch's component is its
output less the constants of its affine tail (the output projection's bias, times the layer
scale), passed through every later norm with that norm's actual statistics frozen — centred
on its own, divided by the norm input's actual standard deviation, times the norm's weight,
no bias — then through the readout and the head's weight (no bias). All in float64, to 1e-10.
"""
from __future__ import annotations

import warnings
from functools import partial

import pytest
import timm
import torch
import torch.nn.functional as F

import fxdecomp
from conftest import images, jitter_, rel_err

TOL = 1e-10


def frozen_norm(c: torch.Tensor, x_in: torch.Tensor, ln: torch.nn.LayerNorm) -> torch.Tensor:
    """LayerNorm ``ln`` applied to the component ``c`` with the statistics of its actual
    input ``x_in`` frozen: centred on its own, scaled by 1/std(x_in), times the weight."""
    rstd = torch.rsqrt(x_in.var(-1, unbiased=False, keepdim=True) + ln.eps)
    return (c - c.mean(-1, keepdim=True)) * rstd * ln.weight


class Catch:
    """Forward hooks that keep each module's output (or, with ``inputs``, its first input)."""

    def __init__(self, modules: dict, inputs: bool = False):
        self.seen: dict = {}
        self.handles = []
        for name, mod in modules.items():
            if inputs:
                hook = (lambda n: lambda m, args: self.seen.__setitem__(n, args[0]))(name)
                self.handles.append(mod.register_forward_pre_hook(hook))
            else:
                hook = (lambda n: lambda m, args, out: self.seen.__setitem__(n, out))(name)
                self.handles.append(mod.register_forward_hook(hook))

    def __enter__(self):
        return self.seen

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def _gamma(ls) -> torch.Tensor | float:
    return ls.gamma if hasattr(ls, "gamma") else 1.0


def _assert_component(out, name: str, want: torch.Tensor) -> None:
    got = out[name]
    err = rel_err(got, want)
    assert err <= TOL, f"{name}: relative error {err:.3g}"


# -- timm ViT: class-token readout, layer scale, a classifier ------------------------------------

def vit64(**kw):
    cfg = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=5, init_values=0.5)
    cfg.update(kw)
    torch.manual_seed(0)
    model = timm.models.vision_transformer.VisionTransformer(**cfg).eval()
    return jitter_(model, scale=0.2).double()


def _vit_tail(model, x_norm_in):
    """The frozen tail after the stream of a timm ViT: final norm, readout, head weight."""
    def tail(c):  # c: [B, N, D], a component's value on the stream
        y = frozen_norm(c, x_norm_in, model.norm)
        y = y[:, 0] if model.global_pool == "token" else y[:, model.num_prefix_tokens:].mean(1)
        if not isinstance(model.fc_norm, torch.nn.Identity):
            raise NotImplementedError
        return y @ model.head.weight.T if isinstance(model.head, torch.nn.Linear) else y
    return tail


def _vit_catch(model):
    mods = {}
    for i, blk in enumerate(model.blocks):
        mods[f"attn{i}"], mods[f"mlp{i}"] = blk.drop_path1, blk.drop_path2
    return mods


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_vit_branches_equal_their_hooked_outputs(pool):
    model = vit64(global_pool=pool, fc_norm=False)
    x = images((3, 32, 32), batch=3, dtype=torch.float64)
    dm = fxdecomp.decompose(model, "block")
    with torch.no_grad(), Catch(_vit_catch(model)) as out_of, Catch({"norm": model.norm}, inputs=True) as in_of:
        ref = model(x)
        dec = dm(x)
    assert rel_err(dec.total(), ref) <= TOL
    tail = _vit_tail(model, in_of["norm"])
    for i, blk in enumerate(model.blocks):
        attn = out_of[f"attn{i}"] - _gamma(blk.ls1) * blk.attn.proj.bias
        mlp = out_of[f"mlp{i}"] - _gamma(blk.ls2) * blk.mlp.fc2.bias
        _assert_component(dec, f"blocks.{i}.attn", tail(attn))
        _assert_component(dec, f"blocks.{i}.mlp", tail(mlp))


def _vit_heads(model, x):
    """Per block: the attention's values, weights and the output projection's input, from hooks."""
    mods = {f"qkv{i}": blk.attn.qkv for i, blk in enumerate(model.blocks)}
    with torch.no_grad(), Catch(mods) as out_of, Catch({"norm": model.norm}, inputs=True) as in_of:
        model(x)
    per_block = []
    for i, blk in enumerate(model.blocks):
        a = blk.attn
        b, n, _ = out_of[f"qkv{i}"].shape
        q, k, v = out_of[f"qkv{i}"].reshape(b, n, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4)
        w = torch.softmax(q @ k.transpose(-2, -1) * a.scale, dim=-1)  # [B, H, N, N]
        per_block.append((w, v))
    return per_block, in_of["norm"]


def test_vit_head_is_its_slice_of_the_output_projection():
    model = vit64()
    x = images((3, 32, 32), batch=3, dtype=torch.float64)
    dec = fxdecomp.decompose(model, "head")(x)
    per_block, norm_in = _vit_heads(model, x)
    tail = _vit_tail(model, norm_in)
    for i, (blk, (w, v)) in enumerate(zip(model.blocks, per_block)):
        d = blk.attn.head_dim
        for h in range(blk.attn.num_heads):
            w_h = blk.attn.proj.weight[:, h * d:(h + 1) * d]
            value = (w[:, h] @ v[:, h]) @ w_h.T * _gamma(blk.ls1)  # (A_h V_h) W_proj[:, h]^T
            _assert_component(dec, f"blocks.{i}.attn[h{h}]", tail(value))


def test_vit_token_is_its_attention_weight_times_its_value_row():
    model = vit64(depth=1)
    x = images((3, 32, 32), batch=2, dtype=torch.float64)
    dm = fxdecomp.decompose(model, "token")
    dec = dm(x)
    per_block, norm_in = _vit_heads(model, x)
    (w, v), = per_block
    tail = _vit_tail(model, norm_in)
    blk = model.blocks[0]
    d, n = blk.attn.head_dim, w.shape[-1]
    by_slot = {(c.head, c.token): c.name for c in dm.components if c.module == "blocks.0.attn"}
    assert len(by_slot) == blk.attn.num_heads * n
    for h in range(blk.attn.num_heads):
        w_h = blk.attn.proj.weight[:, h * d:(h + 1) * d]
        for j in range(n):
            # the source token j's value row, weighted by what every query reads of it
            value = w[:, h, :, j, None] * v[:, h, j, None, :] @ w_h.T * _gamma(blk.ls1)
            _assert_component(dec, by_slot[h, j], tail(value))


# -- timm Swin: windows, shifts, patch merging on the stream --------------------------------------

def swin64():
    from timm.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    model = SwinTransformer(img_size=32, patch_size=4, window_size=4, embed_dim=16, depths=(2, 2),
                            num_heads=(2, 4), num_classes=0).eval()
    return jitter_(model, scale=0.2).double()


def _merge(x):
    """timm's PatchMerging regrouping of [B, H, W, C] into [B, H/2, W/2, 4C] (no padding here)."""
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5).flatten(3)


def _swin_tail(model, in_of, c, stage):
    """A contribution ``c`` ([B, H, W, C]) on stage ``stage``'s stream, carried to the pooled output
    through every later patch merging and the final norm, with the norms' statistics frozen."""
    for s in range(stage + 1, len(model.layers)):
        ds = model.layers[s].downsample
        c = F.linear(frozen_norm(_merge(c), in_of[f"merge{s}"], ds.norm), ds.reduction.weight)
    return frozen_norm(c, in_of["norm"], model.norm).mean((1, 2))


def test_swin_branches_equal_their_hooked_outputs():
    model = swin64()
    x = images((3, 32, 32), batch=2, dtype=torch.float64)
    dm = fxdecomp.decompose(model, "block")
    branches, norms = {}, {"norm": model.norm}
    for s, stage in enumerate(model.layers):
        if not isinstance(stage.downsample, torch.nn.Identity):
            norms[f"merge{s}"] = stage.downsample.norm
        for j, blk in enumerate(stage.blocks):
            branches[f"{s}.{j}.attn"], branches[f"{s}.{j}.mlp"] = blk.drop_path1, blk.drop_path2
    with torch.no_grad(), Catch(branches) as out_of, Catch(norms, inputs=True) as in_of:
        ref = model(x)
        dec = dm(x)
    assert rel_err(dec.total(), ref) <= TOL

    tail = partial(_swin_tail, model, in_of)

    for s, stage in enumerate(model.layers):
        for j, blk in enumerate(stage.blocks):
            attn = out_of[f"{s}.{j}.attn"] - blk.attn.proj.bias
            mlp = (out_of[f"{s}.{j}.mlp"] - blk.mlp.fc2.bias).reshape(attn.shape)
            _assert_component(dec, f"layers.{s}.blocks.{j}.attn", tail(attn, s))
            _assert_component(dec, f"layers.{s}.blocks.{j}.mlp", tail(mlp, s))


# -- open_clip: a small CLIP's visual tower (layer scale, projection) ----------------------------

def clip_visual():
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clip = CLIP(embed_dim=16,
                    vision_cfg=CLIPVisionCfg(image_size=32, patch_size=8, width=32, layers=2, head_width=8,
                                             ls_init_value=0.5),
                    text_cfg=CLIPTextCfg(context_length=8, vocab_size=32, width=16, heads=2, layers=1))
    return jitter_(clip.visual.eval(), scale=0.2).double()


def test_open_clip_branches_equal_their_hooked_outputs():
    visual = clip_visual()
    x = images((3, 32, 32), batch=3, dtype=torch.float64)
    dm = fxdecomp.decompose(visual, "block", input_size=(3, 32, 32))
    blocks = visual.transformer.resblocks
    mods = {}
    for i, blk in enumerate(blocks):
        mods[f"attn{i}"], mods[f"mlp{i}"] = blk.ls_1, blk.ls_2
    with torch.no_grad(), Catch(mods) as out_of, Catch({"ln_post": visual.ln_post}, inputs=True) as in_of:
        ref = visual(x)
        dec = dm(x)
    assert rel_err(dec.total(), ref) <= TOL
    assert visual.pool_type == "tok" and not visual.final_ln_after_pool

    def tail(c):
        return frozen_norm(c, in_of["ln_post"], visual.ln_post)[:, 0] @ visual.proj

    for i, blk in enumerate(blocks):
        attn = out_of[f"attn{i}"] - _gamma(blk.ls_1) * blk.attn.out_proj.bias
        mlp = out_of[f"mlp{i}"] - _gamma(blk.ls_2) * blk.mlp.c_proj.bias
        _assert_component(dec, f"transformer.resblocks.{i}.attn", tail(attn))
        _assert_component(dec, f"transformer.resblocks.{i}.mlp", tail(mlp))
