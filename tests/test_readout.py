"""Readouts and sums compiled in: ``decompose(..., readout=R)`` and ``decompose(..., group=by)``.

Each is checked against the model itself (``model(x) @ R``) and against the full-width
decomposition projected or grouped afterwards, at every granularity, over random ViTs; the
generated code is checked never to build a full-width slice per component.
"""
from __future__ import annotations

import copy
from math import prod

import pytest
import torch
import torch.fx as fx
from hypothesis import given, settings
from hypothesis import strategies as st
from timm.models.swin_transformer import SwinTransformer

import fxdecomp
from conftest import F32_BOUND, F64_BOUND, images, jitter_, rel_err, small_vit
from fxdecomp.compiler import PASSES
from fxdecomp.core.state import CompileState, run_passes
from test_properties import build, vit_configs

GRANULARITIES = ("block", "head", "token")


def _readout(d: int, k: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(d, k, generator=g, dtype=torch.float64).to(dtype)


def _close(a: torch.Tensor, b: torch.Tensor, bound: float) -> None:
    """``a`` equals ``b`` to ``bound`` relative to ``b``'s largest entry."""
    scale = float(b.abs().max()) or 1.0
    err = float((a.double() - b.double()).abs().max()) / scale
    assert err <= bound, f"relative error {err:.3g} > {bound:.1g}"


@given(vit_configs(), st.integers(1, 6))
@settings(max_examples=4)
def test_readout_is_exact_at_every_granularity(drawn, k):
    cfg, fused, seed = drawn
    model = build(cfg, fused, seed).double()
    x = images((3, cfg["img_size"], cfg["img_size"]), batch=3, dtype=torch.float64, seed=seed)
    with torch.no_grad():
        ref = model(x)
    r = _readout(ref.shape[1], k, seed)
    r2 = _readout(ref.shape[1], k, seed + 1)
    for g in GRANULARITIES:
        full = fxdecomp.decompose(model, g)
        dm = fxdecomp.decompose(model, g, readout=r)
        with torch.no_grad():
            f, out = full(x), dm(x)
        assert out.contributions.shape == (3, len(full.components), k)
        assert out.components.names == full.components.names
        assert rel_err(out.output, ref @ r) <= F64_BOUND, g
        assert out.error() <= F64_BOUND, g
        _close(out.contributions, f.contributions @ r, F64_BOUND)
        dm.set_readout(r2)  # no new trace: the buffer and the products of it with weights change
        with torch.no_grad():
            out2 = dm(x)
        _close(out2.contributions, f.contributions @ r2, F64_BOUND)
        assert rel_err(out2.output, ref @ r2) <= F64_BOUND, g
        if g != "token":
            continue
        # float32 (the finest granularity): against the float32 model
        m32 = copy.deepcopy(model).float()
        dm32 = fxdecomp.decompose(m32, g, readout=r2.float())
        with torch.no_grad():
            o32 = dm32(x.float())
            ref32 = m32(x.float())
        assert rel_err(o32.output, ref32 @ r2.float()) <= F32_BOUND
        assert o32.error() <= F32_BOUND, g
        _close(o32.contributions, f.contributions @ r2, 10 * F32_BOUND)


@given(vit_configs())
@settings(max_examples=4)
def test_group_token_equals_grouping_the_full_decomposition(drawn):
    cfg, fused, seed = drawn
    model = build(cfg, fused, seed).double()
    x = images((3, cfg["img_size"], cfg["img_size"]), batch=3, dtype=torch.float64, seed=seed)
    with torch.no_grad():
        ref = model(x)
        full = fxdecomp.decompose(model, "token")(x)
    r = _readout(ref.shape[1], 4, seed)
    for by, readouts in (("token", (None, r)), ("layer", (r,))):
        want = full.group(by)
        for readout in readouts:
            dm = fxdecomp.decompose(model, "token", group=by, readout=readout)
            with torch.no_grad():
                out = dm(x)
            assert out.components.names == want.components.names
            assert [c.to_dict() for c in out.components] == [c.to_dict() for c in want.components]
            expect = want.contributions if readout is None else want.contributions @ r
            _close(out.contributions, expect, F64_BOUND)
            assert out.error() <= F64_BOUND


def test_group_token_gives_one_component_per_position():
    model = small_vit(depth=2, num_heads=4, reg_tokens=1).double()
    dm = fxdecomp.decompose(model, "token", group="token")
    toks = [c for c in dm.components if c.token is not None]
    grid = model.patch_embed.grid_size
    assert len(toks) == prod(grid) + 2  # every patch, the class token and the register token
    assert {(c.row, c.col) for c in toks if c.row is not None} == {(i, j) for i in range(grid[0])
                                                                   for j in range(grid[1])}
    assert sorted(c.prefix for c in toks if c.prefix is not None) == ["cls_token", "reg_token"]
    assert all(c.layer is None and c.head is None for c in toks)  # summed over layers and heads
    fine = fxdecomp.decompose(model, "token")
    assert {c.name for c in dm.components if c.token is None} == {c.name for c in fine.components
                                                                   if c.token is None}


def test_group_token_on_shifted_windows():
    """Swin's shifted windows put a layer's tokens in another order than the positions' slots:
    those pieces are added through an index."""
    torch.manual_seed(0)
    model = jitter_(SwinTransformer(img_size=32, patch_size=2, window_size=4, embed_dim=8, depths=(2, 1),
                                    num_heads=(2, 2), num_classes=0).eval()).double()
    x = images((3, 32, 32), batch=2, dtype=torch.float64)
    with torch.no_grad():
        full = fxdecomp.decompose(model, "token")(x)
    r = _readout(full.output.shape[1], 3, 0)
    want = full.group("token")
    for readout in (None, r):
        dm = fxdecomp.decompose(model, "token", group="token", readout=readout)
        assert any(n.target is fxdecomp.kernels.add_at_ for n in dm.graph_module.graph.nodes)
        with torch.no_grad():
            out = dm(x)
        assert out.components.names == want.components.names
        _close(out.contributions, want.contributions if readout is None else want.contributions @ r, F64_BOUND)


def _compiled(model, x, granularity, readout=None, group=None) -> CompileState:
    state = CompileState(model=model, example=x, granularity=granularity, layers=None, linearize=False,
                         plan_batch=32, dtype=x.dtype, device=x.device, model_name="m", readout=readout, group=group)
    return run_passes(state, PASSES)


class _Sizes(fx.Interpreter):
    """Runs the generated module, recording the size of every tensor each node of the decomposition
    makes (the model's own forward skipped)."""

    def __init__(self, gm, skip):
        super().__init__(gm)
        self.skip, self.sizes = {n.name for n in skip}, {}

    def run_node(self, n):
        out = super().run_node(n)
        if n.name not in self.skip and n.op != "output":
            for t in (out if isinstance(out, (tuple, list)) else (out,)):
                if isinstance(t, torch.Tensor):
                    self.sizes[n.name] = max(self.sizes.get(n.name, 0), t.numel())
        return out


def _largest_per_batch(state: CompileState, shape: tuple) -> tuple[int, str]:
    """(numel, node) of the largest tensor of the decomposition that grows with the batch, per image
    (weights and products of weights alone are made once, and are not counted)."""
    runs = []
    for b in (3, 5):
        probe = _Sizes(state.forward, state.model_nodes)
        with torch.no_grad():
            probe.run(images(shape, batch=b))
        runs.append(probe.sizes)
    grows = {n: (runs[1][n] - runs[0][n]) // 2 for n in runs[0] if runs[1].get(n, 0) != runs[0][n]}
    name = max(grows, key=grows.get)
    return grows[name], name


@pytest.mark.parametrize("group", [None, "token"])
def test_no_full_width_slice_is_built(group):
    """With a readout, every tensor the decomposition makes is smaller than one layer's token slices at
    the output's width (which the full-width module writes, and is checked to)."""
    model = small_vit(embed_dim=64, num_heads=2, depth=2).eval()
    x = images((3, 32, 32), batch=3)
    b, d, k = 3, 64, 4
    full = _compiled(model, x, "token", group=group)
    read = _compiled(model, x, "token", readout=_readout(d, k, 0, torch.float32), group=group)
    tokens = sum(1 for c in _compiled(model, x, "token").components if c.token is not None and c.layer == 0)
    layer_slice = tokens * d  # one layer's token pieces [heads * tokens, D], per image
    big, _ = _largest_per_batch(full, (3, 32, 32))
    if group is None:
        assert big >= layer_slice  # the measure sees the full-width contributions
    small, where = _largest_per_batch(read, (3, 32, 32))
    assert small < layer_slice / 4, (small, where, layer_slice)


def test_readout_of_other_output_shapes():
    """A model returning tokens [B, T, D]: R is [T, D, K] or [T·D, K]."""
    model = small_vit(global_pool="", num_classes=0, depth=1).double()
    x = images((3, 32, 32), batch=2, dtype=torch.float64)
    with torch.no_grad():
        ref = model(x)
        full = fxdecomp.decompose(model, "head")(x)
    t, d = ref.shape[1:]
    r = _readout(t * d, 3, 0)
    for given_r in (r, r.reshape(t, d, 3)):
        out = fxdecomp.decompose(model, "head", readout=given_r)
        with torch.no_grad():
            o = out(x)
        assert rel_err(o.output, ref.reshape(2, -1) @ r) <= F64_BOUND
        _close(o.contributions, full.contributions.reshape(2, len(full), -1) @ r, F64_BOUND)


def test_readout_bad_input():
    model = small_vit(depth=1).double()
    with pytest.raises(fxdecomp.InputError, match=r"shape \[33, 4\].*\[32, K\]"):
        fxdecomp.decompose(model, "head", readout=torch.zeros(33, 4, dtype=torch.float64))
    bad = torch.zeros(32, 4, dtype=torch.float64)
    bad[3, 1] = float("nan")
    with pytest.raises(fxdecomp.InputError, match="non-finite"):
        fxdecomp.decompose(model, "head", readout=bad)
    with pytest.raises(fxdecomp.InputError, match="floating-point"):
        fxdecomp.decompose(model, "head", readout=torch.zeros(32, 4, dtype=torch.long))
    with pytest.raises(fxdecomp.InputError, match="group='heads' is not a grouping.*'token'"):
        fxdecomp.decompose(model, "token", group="heads")
    dm = fxdecomp.decompose(model, "head", readout=torch.ones(32, 4, dtype=torch.float64))
    with pytest.raises(fxdecomp.InputError, match="not K = 4"):
        dm.set_readout(torch.ones(32, 5, dtype=torch.float64))
    inf = torch.ones(32, 4, dtype=torch.float64)
    inf[0, 0] = float("inf")
    before = dm.readout
    with pytest.raises(fxdecomp.InputError, match="non-finite"):
        dm.set_readout(inf)
    torch.testing.assert_close(dm.readout, before, rtol=0, atol=0)  # nothing written half-way
    with pytest.raises(fxdecomp.InputError, match="without a readout"):
        fxdecomp.decompose(model, "head").set_readout(torch.ones(32, 4, dtype=torch.float64))


@pytest.mark.parametrize("granularity", ["head", "token"])
def test_per_component_readout_from_an_aligner(granularity):
    """Each component read through its own map (a token through its head's), against mapping the
    full decomposition with ``map_finer`` and projecting onto the texts afterwards."""
    from fxdecomp.align.compalign import CompAlign

    model = small_vit(depth=2, num_heads=2).double()
    x = images((3, 32, 32), batch=2, dtype=torch.float64)
    heads = fxdecomp.decompose(model, "head")
    aligner = CompAlign(heads.components, 32, 6, seed=2).double()
    texts = _readout(5, 6, 3)  # 5 texts in a 6-d CLIP space
    maps = aligner.readout(["a", "b", "c", "d", "e"], text_embeddings=texts)
    assert set(maps) == set(heads.components.names)
    dm = fxdecomp.decompose(model, granularity, readout=maps)
    with torch.no_grad():
        out = dm(x)
        full = fxdecomp.decompose(model, granularity)(x)
    unit = torch.nn.functional.normalize(texts, dim=1)
    want = aligner.map_finer(full) @ unit.T
    assert out.components.names == full.components.names
    _close(out.contributions, want, F64_BOUND)
    torch.testing.assert_close(out.output, want.sum(1), rtol=1e-12, atol=1e-12)
    assert any("its own map" in n for n in dm.notes)
    with pytest.raises(fxdecomp.InputError, match="no matrix for"):
        fxdecomp.decompose(model, granularity, readout={k: v for k, v in maps.items() if "mlp" not in k})
    with pytest.raises(fxdecomp.InputError, match="does not have"):
        fxdecomp.decompose(model, granularity, readout={**maps, "blocks.9.attn": maps["blocks.0.mlp"]})
    with pytest.raises(fxdecomp.InputError, match="own map"):
        dm.set_readout(maps["blocks.0.mlp"])


class _FakeClip:
    def encode_texts(self, texts, templates=None):
        g = torch.Generator().manual_seed(len(texts[0]))
        return torch.nn.functional.normalize(torch.randn(len(texts), 6, generator=g, dtype=torch.float64), dim=1)


def _swin():
    torch.manual_seed(0)
    return jitter_(SwinTransformer(img_size=32, patch_size=2, window_size=4, embed_dim=8, depths=(2, 1),
                                   num_heads=(2, 2), num_classes=0).eval()).double()


@pytest.mark.parametrize("arch", ["vit", "swin"])
def test_position_maps_from_summed_positions(arch):
    """Segmentation from positions summed at compile time equals it from every token."""
    from fxdecomp.segment import position_decomposition, position_maps

    model = small_vit(depth=2, num_heads=2).double() if arch == "vit" else _swin()
    x = images((3, 32, 32), batch=2, dtype=torch.float64)
    with torch.no_grad():
        full = fxdecomp.decompose(model, "token")(x)
        pos = position_decomposition(model)(x)
    assert len(pos) < len(full) / 2
    d = _readout(2, full.output.shape[1], 5)
    for kw in (dict(reduce="norm"), dict(reduce="signed", direction=d), dict(reduce="norm", size=(20, 20))):
        torch.testing.assert_close(position_maps(pos, **kw), position_maps(full, **kw), rtol=1e-9, atol=1e-12)
    layers = [1] if arch == "vit" else [0, 1]
    with torch.no_grad():
        chosen = position_decomposition(model, layers=layers)(x)
    torch.testing.assert_close(position_maps(chosen), position_maps(full, layers=layers), rtol=1e-9, atol=1e-12)
    with pytest.raises(fxdecomp.InputError, match="position_decomposition\\(model, layers="):
        position_maps(pos, layers=[0])


def test_token_maps_read_compiled_in():
    """Heatmaps from a reader ([B, C, 1]) equal those of the full token decomposition."""
    from fxdecomp.align.compalign import CompAlign
    from fxdecomp.heatmaps import ONE, token_maps, token_reader

    model = small_vit(depth=2, num_heads=2).double()
    x = images((3, 32, 32), batch=2, dtype=torch.float64)
    with torch.no_grad():
        full = fxdecomp.decompose(model, "token")(x)
    aligner = CompAlign(fxdecomp.decompose(model, "head").components, 32, 6, seed=1).double()
    d = _readout(32, 1, 4)[:, 0]
    cases = [(dict(direction=d), dict(direction=d)),
             (dict(text="sea", clip=_FakeClip(), aligner=aligner), dict(text="sea", clip=_FakeClip(), aligner=aligner)),
             (dict(direction=d[:6], aligner=aligner), dict(direction=d[:6], aligner=aligner))]
    for reader_kw, map_kw in cases:
        dm = token_reader(model, **reader_kw)
        with torch.no_grad():
            out = dm(x)
        assert out.contributions.shape == (2, len(full), 1)
        torch.testing.assert_close(token_maps(out, (32, 32), direction=ONE), token_maps(full, (32, 32), **map_kw),
                                   rtol=1e-9, atol=1e-12)
    with pytest.raises(fxdecomp.InputError, match="one vector"):
        token_reader(model, direction=torch.zeros(2, 32))
