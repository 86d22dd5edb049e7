"""Models nobody here wrote, built from small random configurations of their libraries: Hiera's
pooled stage changes, Aimv2's labels, ViTMAE's patch shuffle, open_clip RN50's attention pool."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
from conftest import bound, jitter_, rel_err

import fxdecomp

T = pytest.importorskip("transformers")
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])


def _images(shape, dtype, n: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _strict(model, *args, **kwargs):
    """``decompose`` with every CollapseWarning and AxisWarning an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", fxdecomp.CollapseWarning)
        warnings.simplefilter("error", fxdecomp.AxisWarning)
        return fxdecomp.decompose(model, *args, **kwargs)


HIERA_HEADS = [1, 2, 4, 8]


def _hiera():
    torch.manual_seed(0)
    cfg = T.HieraConfig(image_size=[64, 64], patch_size=[7, 7], embed_dim=32, depths=[1, 1, 1, 1],
                        num_heads=HIERA_HEADS, masked_unit_size=[8, 8], patch_stride=[4, 4], patch_padding=[3, 3])
    return jitter_(T.HieraModel(cfg).eval())


def test_hiera_without_linearize_warns_of_its_stage_changes():
    with pytest.warns(fxdecomp.CollapseWarning, match="linearize=True"):
        dm = fxdecomp.decompose(_hiera(), "block")
    assert dm.collapsed and any("no skip path" in n for n in dm.notes)


@DTYPES
def test_hiera_stage_changes_are_decomposed_with_the_max_selection_frozen(dtype):
    """Each stage change's shortcut is max over query-stride groups of proj(norm(x)): with its
    selection frozen every stage has its own components, exact at that input. Per stage (one
    layer each): its heads, the attention's and the MLP's output biases and the MLP; from the
    second stage on also the shortcut's norm and projection biases (the head of a one-head
    stage is its attention, unsplit)."""
    model = _hiera().to(dtype)
    dm = _strict(model, "head", linearize=True)
    x = _images((3, 64, 64), dtype)
    with torch.no_grad():
        out = dm(x)
        assert rel_err(out.total(), model(x).pooler_output) <= bound(dtype)
    assert sorted(dm.linearised) == [f"encoder.stages.{s}.layers.0 (max)" for s in (1, 2, 3)]
    for stage, heads in enumerate(HIERA_HEADS):
        here = [c for c in dm.components if c.module.startswith(f"encoder.stages.{stage}.")]
        attn = [c for c in here if c.kind == "attn"]
        assert [c.head for c in attn] == (list(range(heads)) if heads > 1 else [None])
        assert len(here) == heads + 3 + (2 if stage else 0), [c.name for c in here]
        assert {c.kind for c in here} == {"attn", "mlp", "bias"}
    assert [c.kind for c in dm.components].count("embed") == 1 and not dm.collapsed


def _aimv2():
    torch.manual_seed(0)
    cfg = T.Aimv2VisionConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                              image_size=32, patch_size=8)
    return jitter_(T.Aimv2VisionModel(cfg).eval())


def test_aimv2_labels_name_its_attention_and_mlp_not_its_norms():
    """Aimv2's RMSNorm is written as pointwise ops, more than its MLP has: the labels still name
    the modules the branches end in. (Exact in float32; in float64 the model itself rounds each
    norm's input to float32, which its decomposition does not, so float64 is not asserted.)"""
    model = _aimv2()
    dm = _strict(model, "head")
    x = _images((3, 32, 32), torch.float32)
    with torch.no_grad():
        assert rel_err(dm(x).total(), model(x).pooler_output) <= bound(torch.float32)
    branches = [(c.name, c.kind, c.module_type, c.layer) for c in dm.components if c.kind in ("attn", "mlp")]
    want = []
    for i in range(2):
        want += [(f"encoder.layers.{i}.attention[h{h}]", "attn", "Aimv2Attention", i) for h in range(4)]
        want.append((f"encoder.layers.{i}.ffn", "mlp", "Aimv2MLP", i))
    assert branches == want
    assert not any("norm" in c.module for c in dm.components if c.kind != "bias")


def _vitmae():
    torch.manual_seed(0)
    cfg = T.ViTMAEConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                         image_size=32, patch_size=8, mask_ratio=0.0)
    return jitter_(T.ViTMAEModel(cfg).eval())


@DTYPES
def test_vitmae_patch_shuffle_is_a_frozen_permutation(dtype):
    """ViTMAE gathers its patch tokens in an order drawn per image at every call (argsort of
    noise; with mask_ratio=0 it keeps them all): the gather is a selection frozen at the index
    the model drew. Seeded alike, the model and its decomposition draw the same order, so every
    token's output is checked, not only an order-free mean."""
    model = _vitmae().to(dtype)
    dm = _strict(model, "token", output="last_hidden_state")
    x = _images((3, 32, 32), dtype)
    with torch.no_grad():
        torch.manual_seed(5)
        out = dm(x)
        torch.manual_seed(5)
        ref = model(x).last_hidden_state
        assert rel_err(out.total(), ref) <= bound(dtype)
        torch.manual_seed(6)  # another draw: another order of the 16 patch tokens
        assert rel_err(out.total(), model(x).last_hidden_state) > 1e-3
    heads = [c for c in dm.components if c.kind == "attn" and c.layer == 0]
    # 4 heads x (class token + 16 gathered patch tokens): the shuffled tokens have no (row, col)
    assert len(heads) == 4 * 17 and all(c.row is None for c in heads)
    assert {"embed", "embeddings.patch_embeddings.projection.bias"} <= set(dm.components.names)


def test_vitmae_mean_of_tokens_is_exact_whatever_the_order():
    model = _vitmae()
    dm = _strict(model, "head", output="mean")
    x = _images((3, 32, 32), torch.float32)
    with torch.no_grad():
        assert rel_err(dm(x).total(), model(x).last_hidden_state[:, 1:].mean(1)) <= bound(torch.float32)


class _PooledConv(torch.nn.Module):
    """A convolution read out by open_clip's ``AttentionPool2d`` (RN50's): the mean token is
    concatenated before the patch tokens and queries them, its heads folded into the batch axis
    (``view [T, B*heads, d]``) inside ``F.multi_head_attention_forward``."""

    def __init__(self):
        super().__init__()
        from open_clip.modified_resnet import AttentionPool2d

        self.embed = torch.nn.Conv2d(3, 32, 4, stride=4, bias=False)
        self.attnpool = AttentionPool2d(4, 32, 4, 16)

    def forward(self, x):
        return self.attnpool(self.embed(x))


@DTYPES
def test_attention_pool_walks_the_mean_token_like_the_stream(dtype):
    """The mean token beside the patch tokens is no branch of its own: each component reaches
    the output through it and through the patch tokens, the pool's weights frozen. Checked
    against an independent computation of the embedding's contribution, per head."""
    pytest.importorskip("open_clip")
    torch.manual_seed(0)
    model = jitter_(_PooledConv().eval()).to(dtype)
    dm = _strict(model, "head", input_size=(3, 16, 16))
    x = _images((3, 16, 16), dtype)
    with torch.no_grad():
        out = dm(x)
        assert rel_err(out.total(), model(x)) <= bound(dtype)
        p = model.attnpool
        t = model.embed(x).flatten(2).permute(2, 0, 1)                  # [HW, B, C]
        t = torch.cat([t.mean(0, keepdim=True), t])                       # the mean token first
        q_in = t + p.positional_embedding[:, None]
        _, w = torch.nn.functional.multi_head_attention_forward(
            q_in, q_in, q_in, 32, 4, None, torch.cat([p.q_proj.bias, p.k_proj.bias, p.v_proj.bias]), None, None,
            False, 0.0, p.c_proj.weight, p.c_proj.bias, training=False, need_weights=True,
            use_separate_proj_weight=True, q_proj_weight=p.q_proj.weight, k_proj_weight=p.k_proj.weight,
            v_proj_weight=p.v_proj.weight, average_attn_weights=False)  # w: [B, heads, T, T]
        v = (t @ p.v_proj.weight.T).view(17, 3, 4, 8)                    # the embedding's values, no bias
        heads = torch.einsum("bhj,jbhd->bhd", w[:, :, 0], v).reshape(3, 32)
        want = heads @ p.c_proj.weight.T
    assert out.components.names == ["embed", "attnpool.positional_embedding", "attnpool.linear",
                                    "attnpool.c_proj.bias"]
    torch.testing.assert_close(out["embed"], want, rtol=0, atol=bound(dtype) * float(want.abs().max()) * 10)
