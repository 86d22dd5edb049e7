"""fxdecomp.heatmaps: token components put back on the image, checked where the answer is known."""
from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

import fxdecomp
from fxdecomp import InputError, UnknownComponentError
from fxdecomp.align import CompAlign
from fxdecomp.components import Component
from fxdecomp.heatmaps import grid_vectors, heatmap, pixel_maps, token_layout, token_maps
from fxdecomp.world import World, load

from conftest import images, jitter_, small_vit


@pytest.fixture(scope="module")
def vit_tokens():
    model = small_vit(seed=3)  # 32x32 images, patch 8: a 4x4 grid, class token, 4 heads, 2 blocks
    dm = fxdecomp.decompose(model, "token")
    with torch.no_grad():
        out = dm(images(dm, batch=2))
    return model, out


def test_a_token_component_lights_exactly_its_patch(vit_tokens):
    _, out = vit_tokens
    comp = next(c for c in out.components if c.layer == 1 and c.head == 2 and c.row == 2 and c.col == 1)
    hm = heatmap(out, index=1, component=comp.name, size=(32, 32), mode="nearest")
    lit = np.abs(hm.array) > 0
    want = np.zeros((32, 32), bool)
    want[16:24, 8:16] = True
    np.testing.assert_array_equal(lit, want)
    # its value there is its own size spread over its cell (a share of itself: its norm)
    norm = float(out.contributions[1, comp.index].double().norm())
    assert hm.array[16:24, 8:16].sum() == pytest.approx(norm, rel=1e-9)
    assert hm.figure is not None and hm.figure.axes


def test_maps_sum_to_the_token_values_and_follow_a_direction(vit_tokens):
    _, out = vit_tokens
    d = torch.randn(out.contributions.shape[2], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    maps = token_maps(out, (32, 32), direction=d, mode="nearest")
    layout = token_layout(out.components)
    reading = torch.einsum("btd,d->bt", out.contributions[:, layout.index].double(), d)
    torch.testing.assert_close(maps.sum((1, 2)), reading.sum(1), rtol=1e-10, atol=1e-10)
    # every cell holds the sum of its tokens' readings
    row, col = 0, 3
    at = [k for k in range(len(layout)) if layout.row[k] == row and layout.col[k] == col]
    cell = maps[:, row * 8:(row + 1) * 8, col * 8:(col + 1) * 8].sum((1, 2))
    torch.testing.assert_close(cell, reading[:, at].sum(1), rtol=1e-10, atol=1e-10)


def test_bilinear_maps_keep_the_total(vit_tokens):
    _, out = vit_tokens
    maps = token_maps(out, (32, 32))  # norms, bilinear
    nearest = token_maps(out, (32, 32), mode="nearest")
    torch.testing.assert_close(maps.sum((1, 2)), nearest.sum((1, 2)), rtol=1e-9, atol=0)


def test_text_direction_through_the_aligner_is_each_token_read_by_its_heads_map(vit_tokens):
    model, out = vit_tokens
    head_names = fxdecomp.decompose(model, "head").components
    aligner = CompAlign(head_names, out.contributions.shape[2], 6, seed=1)

    class FakeClip:
        def encode_texts(self, texts, templates=None):
            g = torch.Generator().manual_seed(len(texts[0]))
            return torch.nn.functional.normalize(torch.randn(len(texts), 6, generator=g, dtype=torch.float64),
                                               dim=1)

    maps = token_maps(out, (32, 32), text="sea", clip=FakeClip(), aligner=aligner, mode="nearest")
    t = FakeClip().encode_texts(["sea"])[0].double()
    layout = token_layout(out.components)
    total = torch.zeros(out.contributions.shape[0], dtype=torch.float64)
    for k in range(len(layout)):
        c = out.components[int(layout.index[k])]
        w = aligner.weight[aligner.names.index(f"{c.name.split('[')[0]}[h{c.head}]")].detach().double()
        total += out.contributions[:, c.index].double() @ w @ t
    torch.testing.assert_close(maps.sum((1, 2)), total, rtol=1e-9, atol=1e-9)


def test_hierarchical_grids_are_found_from_the_labels():
    torch.manual_seed(0)
    model = timm.models.swin_transformer.SwinTransformer(img_size=32, patch_size=2, window_size=4, embed_dim=8,
                                                         depths=(1, 1, 1), num_heads=(1, 2, 2), num_classes=0).eval()
    dm = fxdecomp.decompose(jitter_(model), "token")
    layout = token_layout(dm.components)
    assert sorted(layout.grids) == [(4, 4), (8, 8), (16, 16)]
    with torch.no_grad():
        out = dm(images(dm, batch=1))
    vec = grid_vectors(out.contributions[:, layout.index].double(), layout)
    assert vec.shape[-2:] == (16, 16)
    # vector fields keep every token's contribution: summed over the grid they give the tokens' total
    torch.testing.assert_close(vec.sum((2, 3)), out.contributions[:, layout.index].double().sum(1),
                               rtol=1e-9, atol=1e-9)


def test_a_non_square_grid_is_known_to_every_token_even_a_selected_few():
    """48x64 images in patches of 8: a 6x8 grid, recorded on each token by the compiler, so a few tokens
    chosen from one corner are still placed on the whole grid (their own extent would be 2x3)."""
    torch.manual_seed(0)
    model = timm.models.vision_transformer.VisionTransformer(img_size=(48, 64), patch_size=8, embed_dim=16, depth=2,
                                                             num_heads=2, num_classes=0).eval()
    dm = fxdecomp.decompose(jitter_(model), "token")
    placed = [c for c in dm.components if c.row is not None]
    assert placed and {c.grid for c in placed} == {(6, 8)}
    assert {(c.row, c.col) for c in placed} == {(r, c) for r in range(6) for c in range(8)}
    assert all(c.grid is None for c in dm.components if c.row is None)  # class token, heads, MLPs, biases
    with torch.no_grad():
        out = dm(torch.randn(1, 3, 48, 64))
    corner = out.select(lambda c: c.row is not None and c.row <= 1 and c.col <= 2)
    assert token_layout(corner.components).grids == ((6, 8),)
    comp = next(c for c in corner.components if c.layer == 1 and c.row == 1 and c.col == 2)
    hm = heatmap(corner, component=comp.name, size=(48, 64), mode="nearest")
    want = np.zeros((48, 64), bool)
    want[8:16, 16:24] = True
    np.testing.assert_array_equal(np.abs(hm.array) > 0, want)


def test_each_stage_of_a_hierarchical_model_has_its_own_grid():
    """Swin on 32x48 images, patch 2, merging 2x2 between stages: grids 16x24, 8x12, 4x6, stage by stage, for
    the heatmaps' layout and the segmentation's stages alike."""
    from fxdecomp.segment import attention_stages

    torch.manual_seed(0)
    model = timm.models.swin_transformer.SwinTransformer(img_size=(32, 48), patch_size=2, window_size=4,
                                                         embed_dim=8, depths=(1, 1, 1), num_heads=(1, 2, 2),
                                                         num_classes=0).eval()
    dm = fxdecomp.decompose(jitter_(model), "token")
    by_layer = {}
    for c in dm.components:  # (the last stage pads its 4x6 grid to windows of 4: padding is nowhere)
        if c.row is not None and c.col is not None:
            by_layer.setdefault(c.layer, set()).add(c.grid)
            assert 0 <= c.row < c.grid[0] and 0 <= c.col < c.grid[1]
    assert [by_layer[k] for k in sorted(by_layer)] == [{(16, 24)}, {(8, 12)}, {(4, 6)}]
    assert sorted(token_layout(dm.components).grids) == [(4, 6), (8, 12), (16, 24)]
    assert [s.grid for s in attention_stages(dm.components)] == [(16, 24), (8, 12), (4, 6)]


def test_world_heatmap_of_a_word_needs_clip_and_draws(tmp_path):
    model = load("world-vit")
    dm = fxdecomp.decompose(model, "token", layers=[5])
    img = World(1, 4).arrays()["images"]
    x = (torch.from_numpy(img).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    with torch.no_grad():
        out = dm(x)
    hm = heatmap(out, img[0], component="blocks.5.attn[h1]")
    assert hm.array.shape == (64, 64) and np.isfinite(hm.array).all() and np.abs(hm.array).max() > 0
    hm.figure.savefig(tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 1000
    with pytest.raises(InputError, match="clip"):
        heatmap(out, img[0], text="sea")


def test_bad_requests_name_the_fix(vit_tokens):
    model, out = vit_tokens
    head = fxdecomp.decompose(model, "head")
    with torch.no_grad():
        coarse = head(images(head, batch=1))
    with pytest.raises(InputError, match="token granularity"):
        token_maps(coarse, (32, 32))
    with pytest.raises(UnknownComponentError, match="blocks.1.attn"):
        heatmap(out, component="blocks.1.atn[h2]", size=(32, 32))
    with pytest.raises(InputError, match="out of range"):
        heatmap(out, index=5, size=(32, 32))
    with pytest.raises(InputError, match="mode"):
        pixel_maps(torch.zeros(1, len(out.components)), token_layout(out.components), (8, 8), mode="cubic")
    with pytest.raises(InputError, match="size"):
        heatmap(out)


def test_ancestors_name_the_coarser_components():
    tok = Component(index=0, name="blocks.5.attn[h2,t7]", kind="attn", head=2, token=7)
    head = Component(index=1, name="blocks.5.attn[h2]", kind="attn", head=2)
    assert tok.ancestors() == ("blocks.5.attn[h2]", "blocks.5.attn")
    assert head.ancestors() == ("blocks.5.attn",)
    assert Component(index=2, name="blocks.5.mlp", kind="mlp").ancestors() == ()
