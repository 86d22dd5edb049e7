"""fxdecomp.segment: attention recording, the baselines, the decomposition's maps and the metrics,
each checked on a case whose answer is known."""
from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

import fxdecomp
from fxdecomp import InputError
from fxdecomp.segment import (
    AttentionRecorder,
    attention_stages,
    average_precision,
    dense,
    evaluate_segmentation,
    explicit_sdpa,
    merge_matrix,
    method_maps,
    position_maps,
    readout_of,
    rollout,
    segmentation_figure,
    segmentation_scores,
)

from conftest import images, jitter_


class Planted(torch.nn.Module):
    """One attention layer whose class token reads exactly one patch, by construction.

    Channel 0 marks the class token and channel 1 the target patch (both through the position
    embedding only), so the class token's query meets only the target's key; values are the
    tokens themselves, channel 2 carries +5 on every patch, and logit 0 reads channel 2 of the
    class token: raising any attention weight of the class row raises logit 0.
    """

    def __init__(self, target=(2, 1), grid=4, patch=8, dim=8):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.dim = dim
        self.patch_embed = torch.nn.Conv2d(3, dim, patch, patch)
        self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = torch.nn.Parameter(torch.zeros(1, 1 + grid * grid, dim))
        self.qkv = torch.nn.Linear(dim, 3 * dim, bias=False)
        self.proj = torch.nn.Linear(dim, dim)
        self.head = torch.nn.Linear(dim, 3)
        with torch.no_grad():
            self.patch_embed.weight.copy_(torch.randn(self.patch_embed.weight.shape, generator=g) * 0.05)
            self.patch_embed.weight[:3] = 0
            self.patch_embed.bias.zero_()
            self.patch_embed.bias[2] = 5.0
            self.pos_embed[0, 0, 0] = 1.0
            self.pos_embed[0, 1 + target[0] * grid + target[1], 1] = 1.0
            self.qkv.weight.zero_()
            self.qkv.weight[0, 0] = 30.0  # q0 = 30 * (is class token)
            self.qkv.weight[dim, 1] = 30.0  # k0 = 30 * (is target)
            self.qkv.weight[2 * dim:] = torch.eye(dim)
            self.proj.weight.copy_(torch.eye(dim))
            self.proj.bias.zero_()
            self.head.weight.copy_(torch.randn(3, dim, generator=g) * 0.1)
            self.head.weight[0] = 0
            self.head.weight[0, 2] = 1.0
        self.pretrained_cfg = {"input_size": (3, grid * patch, grid * patch)}

    def forward(self, x):
        b = x.shape[0]
        t = self.patch_embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(b, -1, -1), t], 1) + self.pos_embed
        q, k, v = self.qkv(t).reshape(b, -1, 3, 1, self.dim).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v)
        t = t + self.proj(a.transpose(1, 2).reshape(b, -1, self.dim))
        return self.head(t[:, 0])


@pytest.fixture(scope="module")
def planted():
    model = Planted().eval()
    dm = fxdecomp.decompose(model, "token")
    return model, dm, images(dm, batch=3)


def test_every_method_finds_the_patch_the_model_reads(planted):
    model, dm, x = planted
    target = torch.zeros(len(x), 3)
    target[:, 0] = 1.0
    maps = method_maps(model, dm, x, directions=target, progress=False)
    assert set(maps) == {"decompose", "rollout", "chefer", "gradcam"}
    for name, m in maps.items():
        assert m.shape == (3, 4, 4), name
        flat = m.reshape(3, -1)
        assert (flat.argmax(1) == 2 * 4 + 1).all(), (name, flat)
    # Chefer and Grad-CAM see nothing but the target; rollout keeps half of the class token for itself
    assert float(maps["chefer"].reshape(3, -1)[:, [i for i in range(16) if i != 9]].abs().max()) < 1e-6
    assert float(maps["gradcam"].reshape(3, -1)[:, [i for i in range(16) if i != 9]].abs().max()) < 1e-6
    torch.testing.assert_close(maps["rollout"].reshape(3, -1)[:, 9], torch.full((3,), 0.5, dtype=torch.float64),
                               atol=1e-6, rtol=0)


def test_uniform_attention_rolls_out_to_a_flat_map():
    model = timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=2,
                                                             num_heads=2, num_classes=0).eval()
    jitter_(model)
    with torch.no_grad():
        for blk in model.blocks:  # queries and keys of zero: every token attends to all alike
            blk.attn.qkv.weight[:32] = 0
            blk.attn.qkv.bias[:32] = 0
    dm = fxdecomp.decompose(model, "token")
    m = rollout(model, images(dm, batch=2), dm.components)
    assert m.shape == (2, 4, 4)
    torch.testing.assert_close(m, m[:, :1, :1].expand_as(m), rtol=1e-9, atol=1e-12)
    assert readout_of(model, attention_stages(dm.components)) == "cls"


def test_windowed_attention_is_placed_on_its_windows():
    torch.manual_seed(0)
    model = timm.models.swin_transformer.SwinTransformer(img_size=32, patch_size=2, window_size=4, embed_dim=8,
                                                         depths=(2, 1), num_heads=(1, 2), num_classes=0).eval()
    jitter_(model)
    dm = fxdecomp.decompose(model, "token")
    stages = attention_stages(dm.components)
    assert [s.grid for s in stages] == [(16, 16), (16, 16), (8, 8)]
    x = images(dm, batch=1)
    with torch.no_grad(), AttentionRecorder() as rec:
        model(x)
    for k, (stage, shift) in enumerate(zip(stages[:2], (0, 2))):
        a = dense(rec.maps()[k].double(), stage, 1)[0, 0]
        torch.testing.assert_close(a.sum(-1), torch.ones(256, dtype=torch.float64), rtol=1e-6, atol=1e-6)
        i, j = torch.nonzero(a > 0, as_tuple=True)
        win = lambda t: (((t // 16 + 16 - shift) % 16) // 4, ((t % 16 + 16 - shift) % 16) // 4)  # noqa: E731
        assert (win(i)[0] == win(j)[0]).all() and (win(i)[1] == win(j)[1]).all()
    assert readout_of(model, stages) == "mean"
    maps = method_maps(model, dm, x, directions=torch.ones(1, model.num_features), progress=False)
    assert maps["rollout"].shape == (1, 16, 16) and maps["gradcam"].shape == (1, 8, 8)
    assert maps["decompose"].shape == (1, 16, 16) and torch.isfinite(maps["chefer"]).all()


def test_merging_averages_the_cells_it_covers():
    from fxdecomp.segment.geometry import Stage

    old = Stage("a", (4, 4), ("cls",), torch.arange(17))
    new = Stage("b", (2, 2), ("cls",), torch.arange(5))
    m = merge_matrix(old, new)
    assert m.shape == (5, 17) and m[0, 0] == 1
    torch.testing.assert_close(m.sum(1), torch.ones(5, dtype=torch.float64))
    assert m[1, 1 + 0] == m[1, 1 + 1] == m[1, 1 + 4] == m[1, 1 + 5] == 0.25 and m[1, 1 + 2] == 0


def test_recorded_attention_is_the_models_own():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=g) for _ in range(3))
    for mask in (None, torch.rand(5, 5, generator=g) > 0.3, torch.randn(5, 5, generator=g)):
        if mask is not None and mask.dtype == torch.bool:
            mask.fill_diagonal_(True)
        out, probs = explicit_sdpa(q, k, v, attn_mask=mask)
        torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
        torch.testing.assert_close(probs.sum(-1), torch.ones(2, 3, 5))
    out, _ = explicit_sdpa(q, k, v, is_causal=True)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    for batch_first in (False, True):
        mha = torch.nn.MultiheadAttention(8, 2, batch_first=batch_first).eval()
        x = torch.randn(4, 6, 8, generator=g)
        mask = torch.rand(6, 6, generator=g) > 0.6 if batch_first else None
        if mask is not None:
            mask.fill_diagonal_(False)
        ref_out, ref_w = mha(x, x, x, attn_mask=mask, average_attn_weights=False)
        with AttentionRecorder() as rec:
            out, w = mha(x, x, x, attn_mask=mask, average_attn_weights=False)
        torch.testing.assert_close(out, ref_out)
        torch.testing.assert_close(w, ref_w)
        torch.testing.assert_close(rec.maps()[0], ref_w)


def test_average_precision_matches_a_hand_count():
    # ranks: 0.9 (pos), 0.8 (neg), 0.7 (pos), 0.1 (neg) -> precision at recalls 1/2, 2/2: 1, 2/3
    assert average_precision([0.9, 0.8, 0.7, 0.1], [1, 0, 1, 0]) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # tied scores count as one threshold
    assert average_precision([0.5, 0.5, 0.5, 0.5], [1, 0, 1, 0]) == pytest.approx(0.5)


def test_metrics_of_a_perfect_and_an_inverted_map():
    masks = np.zeros((2, 8, 8), bool)
    masks[0, 2:5, 2:5] = True
    masks[1, 0:3, 4:8] = True
    perfect = torch.from_numpy(masks).double()
    s = segmentation_scores(perfect, masks)
    assert s == {"pixel_acc": 1.0, "miou": 1.0, "map": 1.0}
    worse = segmentation_scores(1 - perfect, masks)
    assert worse["pixel_acc"] == 0.0 and worse["miou"] == 0.0 and worse["map"] < 0.6
    coarse = segmentation_scores(torch.from_numpy(masks[:, ::2, ::2].copy()).double(), masks)  # resized up
    assert 0.7 < coarse["pixel_acc"] <= 1.0
    with pytest.raises(InputError):
        segmentation_scores(perfect[:1], masks)


def test_position_maps_reduce_and_need_tokens(planted, tmp_path):
    model, dm, x = planted
    with torch.no_grad():
        out = dm(x)
    norm = position_maps(out)
    d = torch.zeros(3)
    d[0] = 1
    signed = position_maps(out, direction=d, reduce="signed")
    torch.testing.assert_close(position_maps(out, direction=d, reduce="abs"), signed.abs())
    # the one attention branch's tokens, read along logit 0: the target patch's token reading
    tok = [c for c in out.components if c.row == 2 and c.col == 1][0]
    assert float(signed[0, 2, 1]) == pytest.approx(float(out.contributions[0, tok.index, 0]), rel=1e-9)
    assert norm.shape == (3, 4, 4) and float(norm[0, 2, 1]) == pytest.approx(
        float(out.contributions[0, tok.index].double().norm()), rel=1e-9)
    head = fxdecomp.decompose(model, "head")
    with torch.no_grad(), pytest.raises(InputError, match="token granularity"):
        position_maps(head(x))
    with pytest.raises(InputError, match="token granularity"):
        rollout(model, x, head.components)
    with pytest.raises(InputError, match="direction"):
        position_maps(out, reduce="signed")
    masks = np.zeros((3, 32, 32), bool)
    masks[:, 16:24, 8:16] = True
    maps = method_maps(model, dm, x, directions=torch.eye(3)[[0, 0, 0]], size=(32, 32), progress=False)
    scores = evaluate_segmentation(maps, masks)
    assert scores["decompose"]["map"] > 0.9 and scores["chefer"]["miou"] > 0.5
    fig = segmentation_figure(np.zeros((3, 32, 32, 3), np.uint8), masks, maps, n=2, path=tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 1000 and len(fig.axes) == 2 * 6
