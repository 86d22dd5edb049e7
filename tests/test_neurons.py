"""Neuron granularity: every MLP branch split along the input axis of its last linear layer.

Checked as heads and tokens are: neurons sum to their branch (at head granularity), each
neuron equals its activation times its column of the output weight taken through the
frozen norms and the readout by hand (forward hooks, nothing from the compiler), the
total equals the model's output in float32 and float64, over random architectures.
"""
from __future__ import annotations

import copy
from functools import partial

import pytest
import timm
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from timm.layers import GluMlp, Mlp, SwiGLU

import fxdecomp
from conftest import bound, images, jitter_, rel_err
from fxdecomp.errors import InputError
from test_properties import build, vit_configs
from test_single_components import Catch, _gamma, _merge, _vit_tail, frozen_norm, swin64, vit64

TOL = 1e-10

MLPS = {
    "gelu": {},
    "swiglu": dict(mlp_layer=SwiGLU),  # silu(fc1_g x) * fc1_x x: the product stays whole per unit
    "glu": dict(mlp_layer=GluMlp, act_layer=torch.nn.Sigmoid, mlp_ratio=2),  # one fc1, chunked in two
    "norm": dict(mlp_layer=partial(Mlp, norm_layer=torch.nn.LayerNorm)),  # a norm between act and fc2
}


def _mlp_components(out, module: str):
    return [c for c in out.components if c.module == module and c.kind == "mlp"]


def _hidden(blk) -> int:
    return blk.mlp.fc2.in_features


@pytest.mark.parametrize("mlp", sorted(MLPS))
def test_neurons_sum_to_their_mlp_at_head_granularity(mlp):
    model = vit64(**MLPS[mlp])
    x = images((3, 32, 32), batch=3, dtype=torch.float64)
    with torch.no_grad():
        ref = model(x)
        dm = fxdecomp.decompose(model, "neuron")
        neurons = dm(x)
        heads = fxdecomp.decompose(model, "head")(x)
    assert rel_err(neurons.total(), ref) <= TOL
    assert dm.notes == []
    for i, blk in enumerate(model.blocks):
        mine = _mlp_components(neurons, f"blocks.{i}.mlp")
        assert [c.neuron for c in mine] == list(range(_hidden(blk)))
        layer = heads.components[f"blocks.{i}.mlp"].layer
        assert {(c.layer, c.split, c.head, c.token) for c in mine} == {(layer, "neuron", None, None)}
        total = neurons.contributions[:, [c.index for c in mine]].sum(1)
        assert rel_err(total, heads[f"blocks.{i}.mlp"]) <= TOL
    grouped = neurons.group("head")  # neurons regroup into their branch, heads stay heads
    assert grouped.components.names == heads.components.names
    assert rel_err(grouped.contributions.flatten(1), heads.contributions.flatten(1)) <= TOL


@pytest.mark.parametrize("mlp", sorted(MLPS))
def test_neuron_is_its_activation_times_its_column(mlp):
    model = vit64(**MLPS[mlp])
    x = images((3, 32, 32), batch=2, dtype=torch.float64)
    dec = fxdecomp.decompose(model, "neuron")(x)
    fc2 = {f"fc2_{i}": blk.mlp.fc2 for i, blk in enumerate(model.blocks)}
    with torch.no_grad(), Catch(dict(fc2, norm=model.norm), inputs=True) as in_of:
        model(x)
    tail = _vit_tail(model, in_of["norm"])
    for i, blk in enumerate(model.blocks):
        act = in_of[f"fc2_{i}"]  # [B, N, hidden]: what fc2 reads (after the GLU product, after a norm)
        w2 = blk.mlp.fc2.weight
        for j in range(_hidden(blk)):
            value = act[..., j, None] * w2[:, j] * _gamma(blk.ls2)  # unit j's activation times its column
            want = tail(value)
            got = dec[f"blocks.{i}.mlp[n{j}]"]
            assert rel_err(got, want) <= TOL, (i, j)


def test_swin_neuron_is_its_activation_times_its_column():
    model = swin64()
    x = images((3, 32, 32), batch=2, dtype=torch.float64)
    dm = fxdecomp.decompose(model, "neuron")
    fc2, norms, branches = {}, {"norm": model.norm}, {}
    for s, stage in enumerate(model.layers):
        if not isinstance(stage.downsample, torch.nn.Identity):
            norms[f"merge{s}"] = stage.downsample.norm
        for j, blk in enumerate(stage.blocks):
            fc2[f"{s}.{j}"], branches[f"{s}.{j}"] = blk.mlp.fc2, blk.drop_path2
    with torch.no_grad(), Catch(dict(fc2, **norms), inputs=True) as in_of, Catch(branches) as out_of:
        ref = model(x)
        dec = dm(x)
    assert rel_err(dec.total(), ref) <= TOL

    def tail(c, stage):  # c: [B, H, W, C] on stage ``stage``'s stream
        for s in range(stage + 1, len(model.layers)):
            ds = model.layers[s].downsample
            c = F.linear(frozen_norm(_merge(c), in_of[f"merge{s}"], ds.norm), ds.reduction.weight)
        return frozen_norm(c, in_of["norm"], model.norm).mean((1, 2))

    for s, stage in enumerate(model.layers):
        side = 32 // 4 // 2 ** s
        for j, blk in enumerate(stage.blocks):
            name = f"layers.{s}.blocks.{j}.mlp"
            mine = _mlp_components(dec, name)
            assert len(mine) == blk.mlp.fc2.in_features
            act = in_of[f"{s}.{j}"]  # [B, H·W, hidden]
            branch = (out_of[f"{s}.{j}"] - blk.mlp.fc2.bias).reshape(act.shape[0], side, side, -1)
            assert rel_err(dec.contributions[:, [c.index for c in mine]].sum(1), tail(branch, s)) <= TOL
            for n in range(0, blk.mlp.fc2.in_features, 5):
                value = (act[..., n, None] * blk.mlp.fc2.weight[:, n]).reshape(act.shape[0], side, side, -1)
                assert rel_err(dec[f"{name}[n{n}]"], tail(value, s)) <= TOL, (name, n)


@pytest.mark.parametrize("mlp", ["gelu", "swiglu"])
def test_reconstruction_in_float32(mlp):
    torch.manual_seed(0)
    model = jitter_(timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=5, **MLPS[mlp]).eval())
    x = images((3, 32, 32), batch=3)
    with torch.no_grad():
        out = fxdecomp.decompose(model, "neuron")(x)
        assert rel_err(out.total(), model(x)) <= bound(torch.float32)
    assert out.error() <= bound(torch.float32)


@settings(max_examples=max(1, settings().max_examples // 3))  # four compiles per example
@given(vit_configs(), st.sampled_from(sorted(MLPS)))
def test_random_vits_exact_and_regrouping(drawn, mlp):
    cfg, fused, seed = drawn
    base = build(dict(cfg, **MLPS[mlp]), fused, seed)
    hidden = base.blocks[0].mlp.fc2.in_features
    for dtype in (torch.float32, torch.float64):
        model = copy.deepcopy(base).to(dtype)
        x = images((3, cfg["img_size"], cfg["img_size"]), batch=3, dtype=dtype, seed=seed)
        with torch.no_grad():
            ref = model(x)
            neurons = fxdecomp.decompose(model, "neuron")(x)
            heads = fxdecomp.decompose(model, "head")(x)
        assert rel_err(neurons.total(), ref) <= bound(dtype), (cfg, mlp, dtype)
        assert sum(c.neuron is not None for c in neurons.components) == cfg["depth"] * hidden
        grouped = neurons.group("head")
        assert grouped.components.names == heads.components.names
        scale = float(ref.abs().max())
        torch.testing.assert_close(grouped.contributions, heads.contributions, rtol=0,
                                   atol=bound(dtype) * scale * 10)


def test_layers_choose_which_mlps_are_split():
    model = vit64(depth=3)
    dm = fxdecomp.decompose(model, "neuron", layers=[1])
    x = images(dm, batch=2, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(dm(x).total(), model(x)) <= TOL
    for c in dm.components:
        if c.kind == "mlp":
            assert (c.neuron is not None) == (c.layer == 1), c
        if c.kind == "attn":
            assert (c.head is not None) == (c.layer == 1), c
    assert [c.layer for c in dm.components if c.neuron is not None] == [1] * _hidden(model.blocks[1])


# -- branches that cannot be split, models that have none ----------------------------------------

class _Embed(torch.nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.proj = torch.nn.Conv2d(3, d, 8, 8)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class _GatedNorm(torch.nn.Module):
    """A per-token branch with no weighted layer after its nonlinearity: nothing to split."""

    def __init__(self, d: int):
        super().__init__()
        self.norm = torch.nn.LayerNorm(d)
        self.scale = torch.nn.Parameter(torch.randn(d))

    def forward(self, x):
        return F.gelu(self.norm(x)) * self.scale


class _MlpBlock(torch.nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.norm = torch.nn.LayerNorm(d)
        self.mlp = Mlp(d, 2 * d)

    def forward(self, x):
        return x + self.mlp(self.norm(x))


class _GatedBlock(torch.nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.gate = _GatedNorm(d)

    def forward(self, x):
        return x + self.gate(x)


class _AttnBlock(torch.nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.norm = torch.nn.LayerNorm(d)
        self.attn = timm.models.vision_transformer.Attention(d, num_heads=2)

    def forward(self, x):
        return x + self.attn(self.norm(x))


class _Net(torch.nn.Module):
    def __init__(self, *blocks, d: int = 16):
        super().__init__()
        self.embed = _Embed(d)
        self.blocks = torch.nn.Sequential(*blocks)
        self.norm = torch.nn.LayerNorm(d)

    def forward(self, x):
        return self.norm(self.blocks(self.embed(x))).mean(1)


def _net(*kinds, d: int = 16):
    torch.manual_seed(0)
    make = {"mlp": _MlpBlock, "gated": _GatedBlock, "attn": _AttnBlock}
    return jitter_(_Net(*(make[k](d) for k in kinds), d=d).eval()).double()


def test_branch_without_a_layer_after_its_nonlinearity_stays_whole_and_is_noted():
    model = _net("attn", "gated", "mlp")
    dm = fxdecomp.decompose(model, "neuron", input_size=(3, 32, 32))
    x = images(dm, batch=2, dtype=torch.float64)
    with torch.no_grad():
        out = dm(x)
        assert rel_err(out.total(), model(x)) <= TOL
    assert "blocks.1.gate" in out.components.names  # whole
    assert [c.neuron for c in out.components if c.module == "blocks.2.mlp"] == list(range(32))
    notes = [n for n in dm.notes if "neuron" in n]
    assert len(notes) == 1 and "blocks.1.gate" in notes[0] and "no weighted layer" in notes[0], dm.notes


def test_model_without_mlp_branches_is_refused_naming_its_branches():
    model = _net("attn", "attn")
    with pytest.raises(InputError) as e:
        fxdecomp.decompose(model, "neuron", input_size=(3, 32, 32))
    msg = str(e.value)
    assert "blocks.0.attn (attn)" in msg and "blocks.1.attn (attn)" in msg and "'head'" in msg, msg
    with pytest.raises(InputError, match=r"blocks\.1\.gate \(mlp\)"):
        fxdecomp.decompose(_net("attn", "gated"), "neuron", input_size=(3, 32, 32))
    with pytest.raises(InputError, match=r"in layers \[0\]"):  # the chosen layers have no MLP
        fxdecomp.decompose(_net("attn", "mlp"), "neuron", layers=[0], input_size=(3, 32, 32))


# -- neurons in words: the shipped world-vit and its head-granularity aligner ----------------------

@pytest.fixture(scope="module")
def world_neurons():
    from fxdecomp.align import ClipSpace, collect, representation
    from fxdecomp.models_registry import load, transform_for
    from fxdecomp.world import EVAL_SEED, World
    from fxdecomp.world.aligners import load_aligner

    rep = representation(load("world-vit").float())
    imgs = World(24, EVAL_SEED).arrays()["images"]
    clip = ClipSpace.world()
    fine = collect(fxdecomp.decompose(rep, "neuron"), imgs, preprocess=transform_for(rep), clip=clip, progress=False)
    # neurons regroup exactly into head granularity (tested above), the aligner's own components
    grouped = fxdecomp.Decomposition(fine.contributions, fine.components, fine.contributions.sum(1)).group("head")
    return {"neuron": fine, "head": grouped}, load_aligner("world-vit"), clip


def test_world_neurons_are_read_with_their_mlps_map(world_neurons):
    from fxdecomp.align import describe, property_scores

    feats, aligner, clip = world_neurons
    fine, coarse = feats["neuron"], feats["head"]
    aligned, whole = aligner.map(fine, finer=True), aligner.map(coarse)
    assert aligned.names == fine.names
    torch.testing.assert_close(aligned.total(), whole.total(), rtol=1e-4, atol=1e-4)
    words = ["red", "green", "blue", "yellow", "circle", "square", "sea", "forest"]
    mlp = "blocks.1.mlp"
    w = aligner.weight[aligner.names.index(mlp)].detach().double()
    neurons = [c for c in fine.components if c.module == mlp and c.neuron is not None]
    assert len(neurons) == 4 * fine.contributions.shape[2]
    # one neuron in words, by hand: its contributions through its MLP's map, centred, projected
    # on the centred unit text embeddings, spread over images
    one = neurons[7]
    x = fine.contributions[:, one.index].double() @ w
    x = x - x.mean(0)
    emb = clip.encode_texts(words).double()
    t = emb / emb.norm(dim=1, keepdim=True)
    t = t - t.mean(0)
    t = t / t.norm(dim=1, keepdim=True)
    spread = (x @ t.T).pow(2).mean(0).sqrt()
    want = [(words[int(i)], float(spread[i])) for i in torch.argsort(spread, descending=True)[:3]]
    got = describe(aligned, one.name, words, k=3, text_embeddings=emb)
    assert [g[0] for g in got] == [n for n, _ in want]
    assert [g[1] for g in got] == pytest.approx([v for _, v in want], rel=1e-4)
    # variance shares are linear in the component: a layer's neurons share what its MLP does
    for prop in (["red", "green", "blue", "yellow"], ["sea", "forest", "desert", "city"]):
        fine_scores = property_scores(aligned, prop, clip=clip)
        coarse_scores = property_scores(whole, prop, clip=clip)
        assert sum(fine_scores.values()) == pytest.approx(1.0, abs=1e-6)
        assert sum(fine_scores[c.name] for c in neurons) == pytest.approx(coarse_scores[mlp], abs=1e-4)


def test_finer_map_needs_components(world_neurons):
    feats, aligner, _ = world_neurons
    with pytest.raises(InputError, match="finer=True"):
        aligner.map(feats["neuron"].contributions, finer=True)
    with pytest.raises(InputError, match="components do not match"):
        aligner.map(feats["neuron"])  # without finer: the aligner's own components only


def test_neuron_run_from_the_command_line(tmp_path):
    from fxdecomp.cli import main
    from fxdecomp.store import open_run

    out = tmp_path / "neurons"
    assert main(["decompose", "world-vit", "world:6:3", "--granularity", "neuron", "--layers", "1", "--out", str(out),
                 "--batch", "3", "--workers", "0"]) == 0
    run = open_run(out, verify=True)
    assert run.granularity == "neuron" and run.error() < 1e-5
    split = [c for c in run.components if c.neuron is not None]
    assert {c.module for c in split} == {"blocks.1.mlp"} and [c.neuron for c in split] == list(range(len(split)))
    # the stored neurons add up to the stored output less every other component
    data = run.images(range(run.n))
    whole = data[:, [c.index for c in split]].sum(1)
    rest = data[:, [c.index for c in run.components if c.neuron is None]].sum(1)
    assert rel_err(whole + rest, run.outputs()) <= 1e-5


@pytest.mark.slow
def test_deit_base_neurons_at_full_width():
    """DeiT-B's 36,864 neurons at batch 2, full width ([2, 37035, 768], 217 MB in float32)."""
    torch.manual_seed(0)
    model = timm.create_model("deit_base_patch16_224", pretrained=False, num_classes=0).eval()
    dm = fxdecomp.decompose(model, "neuron")
    hm = fxdecomp.decompose(model, "head", layers=[11])
    x = images(dm, batch=2)
    with torch.no_grad():
        ref = model(x)
        out, heads = dm(x), hm(x)
    assert sum(c.neuron is not None for c in out.components) == 12 * 3072
    assert rel_err(out.total(), ref) <= bound(torch.float32)
    last = [c.index for c in out.components if c.module == "blocks.11.mlp"]
    assert len(last) == 3072
    assert rel_err(out.contributions[:, last].double().sum(1), heads["blocks.11.mlp"]) <= 1e-5


@pytest.mark.parametrize("mlp", ["gelu", "swiglu"])
def test_neurons_with_a_compiled_readout(mlp):
    """Neuron granularity only adds components: a readout R applies to each, as to any other."""
    model = vit64(**MLPS[mlp])
    x = images((3, 32, 32), batch=3, dtype=torch.float64)
    r = torch.randn(5, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        ref = model(x)
        full = fxdecomp.decompose(model, "neuron")(x)
        read = fxdecomp.decompose(model, "neuron", readout=r)(x)
        by_layer = fxdecomp.decompose(model, "neuron", group="layer")(x)
    assert read.components.names == full.components.names
    assert read.contributions.shape == (3, len(full.components), 4)
    assert rel_err(read.contributions.flatten(1), (full.contributions @ r).flatten(1)) <= TOL
    assert rel_err(read.total(), ref @ r) <= TOL
    assert rel_err(by_layer.contributions.flatten(1), full.group("layer").contributions.flatten(1)) <= TOL
