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
