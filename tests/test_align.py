"""fxdecomp.align: CompAlign, descriptions and scores, on planted synthetic data and tiny models."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

import fxdecomp
from fxdecomp import InputError
from fxdecomp.align import (
    Aligned,
    ClipSpace,
    CompAlign,
    Features,
    ImageBatches,
    Stream,
    auc,
    clip_scores,
    collect,
    describe,
    fit_probe,
    probe_accuracy,
    property_scores,
    rankdata,
    readout_effects,
    representation,
    spearman,
    textspan,
    value_aucs,
)
from fxdecomp.components import Component, ComponentTable
from fxdecomp.models_registry import transform_for
from fxdecomp.world import World


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The planted problems are tiny: one thread is faster than two that wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def orthonormal(rows: int, cols: int, g: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(max(rows, cols), min(rows, cols), generator=g))
    return q if rows >= cols else q.T


def planted(n=768, c=3, d=8, e=4, *, orthogonal=True, shared=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, d, generator=g)
    k = 1 if shared else c
    if orthogonal:
        w = torch.stack([orthonormal(d, e, g) for _ in range(k)])
    else:
        w = torch.randn(k, d, e, generator=g) / d ** 0.5
    y = torch.einsum("ncd,cde->ne", x, w.expand(c, d, e))
    return x, F.normalize(y, dim=1), w


def table(n: int) -> ComponentTable:
    return ComponentTable(Component(index=i, name=f"comp{i}", kind="attn") for i in range(n))


# -- CompAlign ------------------------------------------------------------------------------------------
def test_recovers_planted_orthogonal_maps():
    """Σ c_i W_i with orthogonal W_i: cosine loss + penalty has its unique minimum at the planted maps
    (cosine fixes each map up to one common scale, the penalty fixes the scale)."""
    x, y, w = planted()
    aligner = CompAlign(3, 8, 4, lam=1.0, seed=5)
    hist = aligner.fit(x[:640], y[:640], epochs=150, batch_size=64, lr=1e-2, progress=False)
    assert hist["loss"][-1] < hist["loss"][0]
    with torch.no_grad():
        held = F.cosine_similarity(aligner.aligned(x[640:]), y[640:], dim=1)
    assert held.min() > 0.999
    rel = (aligner.weight.detach() - w).norm() / w.norm()
    assert rel < 0.03, rel
    assert aligner.bias.detach().norm() < 0.03
    assert float(aligner.ortho_penalty().detach()) < 1e-3


@pytest.mark.parametrize("shared", [False, True])
def test_unpenalised_maps_recovered_up_to_one_scale(shared):
    """Without the penalty only the direction of (W_1, ..., W_n) is identifiable: all maps share one
    positive scale, whichever it is."""
    x, y, w = planted(orthogonal=False, shared=shared, seed=1)
    aligner = CompAlign(3, 8, 4, variant="shared" if shared else "per_component", lam=0.0, seed=3)
    aligner.fit(x, y, epochs=150, batch_size=64, lr=1e-2, progress=False)
    got = aligner.weight.detach()
    assert got.shape == w.shape
    cos = F.cosine_similarity(got.flatten(), w.flatten(), dim=0)
    assert cos > 0.995, cos
    assert aligner.bias.detach().norm() / got.norm() < 0.02


@pytest.mark.parametrize("d_model,d_clip", [(8, 4), (4, 8), (6, 6)])
def test_ortho_penalty_zero_exactly_for_orthogonal_maps(d_model, d_clip):
    aligner = CompAlign(5, d_model, d_clip, lam=1.0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        aligner.weight.copy_(torch.stack([orthonormal(d_model, d_clip, g) for _ in range(5)]))
    assert float(aligner.ortho_penalty().detach()) < 1e-10
    with torch.no_grad():
        aligner.weight[2] *= 1.5
    assert float(aligner.ortho_penalty().detach()) > 0.1
    with torch.no_grad():
        aligner.weight.normal_()
    assert float(aligner.ortho_penalty().detach()) > 0.1


def test_initialisations():
    """Independent orthogonal maps differ; a common start is one orthogonal map for every
    component; the small start has std 0.02; anything else is refused by name."""
    indep, common = CompAlign(3, 16, 8, seed=1), CompAlign(3, 16, 8, seed=1, init="common")
    small = CompAlign(40, 16, 8, seed=1, init="small")
    for a in (indep, common):
        assert float(a.ortho_penalty().detach()) < 1e-10
    assert not torch.allclose(indep.weight[0], indep.weight[1])
    assert torch.equal(common.weight[1], common.weight[0]) and torch.equal(common.weight[2], common.weight[0])
    assert torch.equal(common.weight[0], indep.weight[0])  # the same first draw
    w = small.weight.detach()
    assert abs(float(w.std()) - 0.02) < 0.001 and abs(float(w.mean())) < 0.001
    with pytest.raises(InputError, match="init must be one of"):
        CompAlign(3, 16, 8, init="identity")


def test_ortho_penalty_value():
    """‖WᵀW − I‖² / (n · r): for W = 2·I_2 (n = 1), WᵀW − I = 3·I, so 18 / 2."""
    aligner = CompAlign(1, 2, 2, lam=1.0)
    with torch.no_grad():
        aligner.weight.copy_(2 * torch.eye(2).unsqueeze(0))
    assert float(aligner.ortho_penalty().detach()) == pytest.approx(9.0)


def test_penalty_enters_the_loss_with_lambda():
    x, y, _ = planted(n=16)
    a = CompAlign(3, 8, 4, lam=0.0)
    b = CompAlign(3, 8, 4, lam=2.5)
    with torch.no_grad():
        a.weight.mul_(1.7)
        b.weight.copy_(a.weight)
    la, ca, pa = (v.detach() for v in a.loss(x, y))
    lb, cb, pb = (v.detach() for v in b.loss(x, y))
    assert torch.allclose(ca, cb) and torch.allclose(pa, pb) and float(pa) > 0
    assert float(la) == pytest.approx(float(ca))
    assert float(lb) == pytest.approx(float(cb) + 2.5 * float(pb), rel=1e-6)


def test_dimension_mismatches_raise_input_error():
    aligner = CompAlign(3, 8, 4)
    with pytest.raises(InputError, match="d_model"):
        aligner(torch.randn(2, 3, 7))
    with pytest.raises(InputError, match="3 components|maps 3"):
        aligner(torch.randn(2, 5, 8))
    with pytest.raises(InputError, match="d_clip"):
        aligner.fit(torch.randn(4, 3, 8), torch.randn(4, 5), epochs=1, progress=False)
    with pytest.raises(InputError, match="same images"):
        aligner.fit(torch.randn(4, 3, 8), torch.randn(3, 4), epochs=1, progress=False)
    with pytest.raises(InputError, match="d_clip"):
        aligner.check(d_clip=16)
    with pytest.raises(InputError, match="d_model"):
        aligner(torch.randn(2, 8))
    aligned = aligner.map(torch.randn(6, 3, 8))
    with pytest.raises(InputError, match="4-d CLIP space"):
        property_scores(aligned, ["a", "b"], text_embeddings=torch.randn(2, 5))
    with pytest.raises(InputError, match="4-d CLIP space"):
        describe(aligned, 0, ["a", "b"], text_embeddings=torch.randn(2, 5))


def test_decomposition_components_matched_by_name_and_checked(tiny_model):
    _, dm = tiny_model
    x = torch.randn(4, 3, 32, 32)
    out = dm(x)
    width = out.contributions.shape[2]
    aligner = CompAlign(dm.components, width, 6)
    # the same components listed in another order are matched by name
    perm = list(reversed(range(len(out))))
    shuffled = fxdecomp.Decomposition(out.contributions[:, perm], ComponentTable(
        Component(**{**dm.components[i].to_dict(), "index": j}) for j, i in enumerate(perm)), out.output)
    assert torch.allclose(aligner(out), aligner(shuffled))
    with pytest.raises(InputError, match="d_model"):
        CompAlign(dm.components, width + 1, 6)(out)
    with pytest.raises(InputError, match="components do not match"):
        CompAlign([f"other{i}" for i in range(len(out))], width, 6)(out)
    with pytest.raises(InputError, match="components do not match"):
        aligner(out.select(kind="attn"))


def test_save_load_round_trip(tmp_path):
    x, y, _ = planted(n=64)
    aligner = CompAlign(["a", "b", "c"], 8, 4, lam=0.5, clip_name="world-clip", model_name="m")
    aligner.fit(x, y, epochs=2, batch_size=16, lr=1e-2, progress=False)
    path = tmp_path / "aligner.safetensors"
    aligner.save(path)
    loaded = CompAlign.load(path)
    assert loaded.names == ["a", "b", "c"] and loaded.lam == 0.5 and loaded.variant == "per_component"
    assert loaded.clip_name == "world-clip" and loaded.model_name == "m"
    with torch.no_grad():
        assert torch.equal(loaded(x), aligner(x))
        assert torch.equal(loaded.aligned(x), aligner.aligned(x))
    CompAlign.load(path, components=["a", "b", "c"], d_model=8, d_clip=4, clip_name="world-clip")
    with pytest.raises(InputError, match="other components"):
        CompAlign.load(path, components=["a", "c", "b"])
    with pytest.raises(InputError, match="d_clip"):
        CompAlign.load(path, d_clip=64)
    with pytest.raises(InputError, match="d_model"):
        CompAlign.load(path, d_model=16)
    with pytest.raises(InputError, match="trained for CLIP"):
        CompAlign.load(path, clip_name="open_clip:ViT-B-16")
    shared = CompAlign(3, 8, 4, variant="shared", lam=0.0)
    shared.save(tmp_path / "shared.safetensors")
    again = CompAlign.load(tmp_path / "shared.safetensors")
    assert again.variant == "shared" and again.weight.shape == (1, 8, 4)
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(InputError, match="not a CompAlign file"):
        CompAlign.load(tmp_path / "other.safetensors")


# -- scores -------------------------------------------------------------------------------------------------
def synthetic_aligned(n=300, c=6, d=10, seed=0):
    """Components reading planted text directions with different strengths, plus CLIP embeddings."""
    g = torch.Generator().manual_seed(seed)
    texts = F.normalize(torch.randn(3, d, generator=g), dim=1)
    z = torch.randn(n, 3, generator=g)
    strength = torch.tensor([[2.0, 0, 0], [0, 1.0, 0], [0.5, 0.5, 0.5], [0, 0, 0], [0, 0, 1.5], [1.0, 0, 0]])
    mapped = torch.einsum("nk,ck,kd->ncd", z, strength[:c], texts) + 0.3 * torch.randn(n, c, d, generator=g)
    mapped[:, 3] = torch.randn(d, generator=g)  # a constant component
    clip = F.normalize(mapped.sum(1) + 0.2 * torch.randn(n, d, generator=g), dim=1)
    return Aligned(mapped, [f"comp{i}" for i in range(c)], clip), texts


def test_scores_invariant_to_component_order():
    aligned, texts = synthetic_aligned()
    descs = ["x", "y", "z"]
    ps = property_scores(aligned, descs, text_embeddings=texts)
    cs = clip_scores(aligned, descs, text_embeddings=texts)
    for perm in ([5, 4, 3, 2, 1, 0], [2, 0, 5, 1, 3, 4]):
        other = aligned.permute(perm)
        assert other.names != aligned.names
        ps2 = property_scores(other, descs, text_embeddings=texts)
        cs2 = clip_scores(other, descs, text_embeddings=texts)
        for name in aligned.names:
            assert ps2[name] == pytest.approx(ps[name], abs=1e-10)
            assert cs2[name] == pytest.approx(cs[name], abs=1e-10)


def test_scores_rank_planted_components_and_constants_score_zero():
    aligned, texts = synthetic_aligned()
    ps = property_scores(aligned, ["x", "y", "z"], text_embeddings=texts, method="paper")
    only_x = property_scores(aligned, ["x"], text_embeddings=texts[:1], method="paper")
    assert all(np.isfinite(v) for v in ps.values())
    assert ps["comp3"] == 0.0 and only_x["comp3"] == 0.0
    # comp0 and comp5 read only x, comp1 and comp4 never do
    assert min(only_x["comp0"], only_x["comp5"]) > 0.4 > max(abs(only_x["comp1"]), abs(only_x["comp4"]))
    assert only_x["comp0"] > only_x["comp5"]
    cs = clip_scores(aligned, ["x"], text_embeddings=texts[:1])
    assert cs["comp3"] == 0.0 and cs["comp0"] > 0.5 > abs(cs["comp1"])


def test_property_score_is_the_mean_correlation_over_an_svd_basis():
    aligned, texts = synthetic_aligned(seed=3)
    ps = property_scores(aligned, ["x", "y"], text_embeddings=texts[:2], method="paper")
    basis = np.linalg.svd(F.normalize(texts[:2].double(), dim=1).numpy(), full_matrices=False)[2].T
    m = aligned.mapped.double().numpy()
    for i, name in enumerate(aligned.names):
        if name == "comp3":
            continue
        want = np.mean([np.corrcoef(m[:, i] @ basis[:, j], m.sum(1) @ basis[:, j])[0, 1] for j in range(2)])
        assert ps[name] == pytest.approx(want, abs=1e-9)


def brute_spearman(x, y):
    def ranks(v):
        return [1 + sum(u < a for u in v) + (sum(u == a for u in v) - 1) / 2 for a in v]

    rx, ry = np.array(ranks(x), float), np.array(ranks(y), float)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / np.sqrt((rx ** 2).sum() * (ry ** 2).sum()))


def test_spearman_matches_brute_force_with_ties():
    rng = np.random.default_rng(0)
    for n in range(3, 9):
        for _ in range(20):
            x, y = rng.integers(0, 4, n).tolist(), rng.integers(0, 3, n).tolist()
            if len(set(x)) == 1 or len(set(y)) == 1:
                assert np.isnan(spearman(x, y))
                continue
            assert spearman(x, y) == pytest.approx(brute_spearman(x, y), abs=1e-12)
    # no ties: the textbook formula
    x, y = rng.permutation(10), rng.permutation(10)
    d = rankdata(x) - rankdata(y)
    assert spearman(x, y) == pytest.approx(1 - 6 * (d ** 2).sum() / (10 * 99))
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_spearman_pairs_dicts_by_name():
    a = {"p": 1.0, "q": 2.0, "r": 3.0}
    assert spearman(a, {"r": 30.0, "p": 10.0, "q": 20.0}) == pytest.approx(1.0)
    with pytest.raises(InputError, match="different components"):
        spearman(a, {"p": 1.0, "q": 2.0, "s": 3.0})


def test_rankdata_averages_ties():
    assert rankdata([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]


# -- descriptions ---------------------------------------------------------------------------------------------
def test_describe_and_textspan_find_the_planted_directions():
    g = torch.Generator().manual_seed(0)
    basis = orthonormal(12, 6, g).T  # 6 orthonormal text directions in a 12-d space
    words = [f"w{i}" for i in range(6)]
    z = torch.randn(400, 2, generator=g)
    mapped = (3 * z[:, :1] * basis[4] + 1.5 * z[:, 1:] * basis[1]).unsqueeze(1) + 5.0  # constant offset too
    aligned = Aligned(mapped + 0.01 * torch.randn(400, 1, 12, generator=g), ["comp"])
    top = describe(aligned, "comp", words, 3, text_embeddings=basis, center_texts=False)
    assert [w for w, _ in top[:2]] == ["w4", "w1"]
    assert top[0][1] == pytest.approx(3.0, rel=0.15) and top[1][1] == pytest.approx(1.5, rel=0.15)
    span = textspan(aligned, "comp", words, 2, text_embeddings=basis, center_texts=False)
    assert [w for w, _ in span] == ["w4", "w1"]
    assert span[0][1] + span[1][1] > 0.99


def test_textspan_deflates_what_projection_repeats():
    """A text nearly parallel to the first pick ranks second by projection, but adds nothing once the
    first direction is projected out: TextSpan moves on to the second real direction."""
    g = torch.Generator().manual_seed(1)
    basis = orthonormal(10, 3, g).T
    twin = F.normalize(basis[0] + 0.1 * basis[2], dim=0)
    texts = torch.stack([basis[0], basis[1], twin])
    words = ["first", "second", "twin"]
    z = torch.randn(500, 2, generator=g)
    aligned = Aligned((3 * z[:, :1] * basis[0] + z[:, 1:] * basis[1]).unsqueeze(1), ["c"])
    proj = [w for w, _ in describe(aligned, "c", words, 3, text_embeddings=texts, center_texts=False)]
    span = [w for w, _ in textspan(aligned, "c", words, 2, text_embeddings=texts, center_texts=False)]
    assert proj[:2] == ["first", "twin"]
    assert span == ["first", "second"]


def test_centering_texts_removes_the_shared_template_direction():
    g = torch.Generator().manual_seed(2)
    basis = orthonormal(8, 4, g).T
    texts = F.normalize(2 * basis[0] + basis[1:], dim=1)  # three words sharing one strong direction
    z = torch.randn(300, 2, generator=g)
    mapped = (4 * z[:, :1] * basis[0] + z[:, 1:] * basis[2]).unsqueeze(1)
    aligned = Aligned(mapped, ["c"])
    assert describe(aligned, "c", ["a", "b", "c"], 1, text_embeddings=texts)[0][0] == "b"


# -- ground-truth helpers -------------------------------------------------------------------------------------
def test_auc_matches_pair_counting():
    rng = np.random.default_rng(0)
    s, y = rng.integers(0, 5, 40), rng.random(40) < 0.4
    pairs = [(a > b) + 0.5 * (a == b) for a, b in itertools.product(s[y], s[~y])]
    assert auc(s, y) == pytest.approx(np.mean(pairs))
    assert auc([1, 2], [True, True]) == 0.5


def test_value_aucs_and_probe_read_planted_values():
    g = torch.Generator().manual_seed(0)
    n, c, d = 600, 3, 5
    labels = torch.randint(0, 3, (n,), generator=g).numpy()
    x = torch.randn(n, c, d, generator=g)
    x[:, 0, 0] += 3.0 * torch.as_tensor(labels == 2)  # component 0 encodes value 2
    tr, te = slice(0, 400), slice(400, n)
    a = value_aucs(x[tr], labels[tr], x[te], labels[te], 3)
    assert a[0, 2] > 0.9 and a[1:, :].max() < 0.7 and a.shape == (3, 3)
    onehot = F.one_hot(torch.as_tensor(labels), 3).float() * 3 + 0.3 * torch.randn(n, 3, generator=g)
    assert probe_accuracy(onehot[tr], labels[tr], onehot[te], labels[te]) > 0.95
    assert probe_accuracy(x[tr, 1], labels[tr], x[te, 1], labels[te]) < 0.5


# -- real models -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5).eval()
    rep = representation(model)
    return rep, fxdecomp.decompose(rep, "head")


@pytest.fixture(scope="module")
def world_clip():
    return ClipSpace.world()


@pytest.fixture(scope="module")
def world_images():
    return World(40, seed=3).arrays()


def test_representation_cuts_off_the_classifier():
    torch.manual_seed(0)
    model = timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=1,
                                                               num_heads=2, num_classes=7).eval()
    rep = representation(model)
    x = torch.randn(2, 3, 32, 32)
    assert rep(x).shape == (2, 16) and model(x).shape == (2, 7)
    assert representation(rep) is rep
    with pytest.raises(InputError, match="representation"):
        representation(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 4)))


def test_end_to_end_on_a_tiny_model(tiny_model, world_clip, world_images):
    rep, dm = tiny_model
    pre = transform_for(rep)
    feats = collect(dm, world_images["images"], preprocess=pre, clip=world_clip, batch_size=16, progress=False)
    assert feats.contributions.shape == (40, len(dm.components), 32) and feats.clip.shape == (40, world_clip.dim)
    # paired image by image, in dataset order
    with torch.no_grad():
        want = rep(pre(torch.from_numpy(world_images["images"]).permute(0, 3, 1, 2)))
    assert torch.allclose(feats.contributions.sum(1), want, atol=1e-4)
    assert torch.allclose(feats.clip, world_clip.encode_images(world_images["images"]), atol=1e-5)
    aligner = CompAlign.for_features(feats, lam=1.0, clip_name=world_clip.name)
    hist = aligner.fit(feats, epochs=3, batch_size=8, lr=3e-3, progress=False)
    assert len(hist["loss"]) == 3 and hist["loss"][-1] < hist["loss"][0]
    aligned = aligner.map(feats)
    descs = ["red", "blue", "green"]
    ps = property_scores(aligned, descs, clip=world_clip, method="paper")
    cs = clip_scores(aligned, descs, clip=world_clip)
    assert set(ps) == set(dm.components.names)
    # the scores are what they say: correlations along the texts' (SVD) basis, and with CLIP's own reading
    t = world_clip.encode_texts(descs).double()
    basis = torch.linalg.svd(t, full_matrices=False)[2].T
    m = aligned.mapped.double()
    i = int(m.var(0).sum(-1).argmax())  # a component that varies (a constant scores 0)
    name = dm.components.names[i]
    want = np.mean([np.corrcoef((m[:, i] @ basis[:, j]).numpy(), (m.sum(1) @ basis[:, j]).numpy())[0, 1]
                    for j in range(3)])
    assert ps[name] == pytest.approx(want, abs=1e-6)
    want_cs = np.mean([np.corrcoef((m[:, i] @ t[j]).numpy(), (aligned.clip.double() @ t[j]).numpy())[0, 1]
                       for j in range(3)])
    assert cs[name] == pytest.approx(want_cs, abs=1e-6)
    assert -1 <= spearman(ps, cs) <= 1
    words = ["circle", "sea", "red"]
    top = describe(aligned, name, words, 2, clip=world_clip)
    tw = world_clip.encode_texts(words).double()
    tw = F.normalize(tw - tw.mean(0), dim=1)
    x = m[:, i] - m[:, i].mean(0)
    spread = (x @ tw.T).pow(2).mean(0).sqrt()
    order = torch.argsort(spread, descending=True)[:2]
    assert [w for w, _ in top] == [words[int(k)] for k in order]
    assert [v for _, v in top] == pytest.approx([float(spread[k]) for k in order], rel=1e-6)
    with pytest.raises(InputError, match="d_clip"):
        CompAlign.for_features(feats, clip_dim=32).fit(feats, epochs=1, progress=False)


def test_collect_reads_in_order_and_refuses_shuffled_loaders(tiny_model, world_images):
    rep, dm = tiny_model
    pre = transform_for(rep)
    images = world_images["images"][:12]
    ref = collect(dm, images, preprocess=pre, batch_size=5, progress=False)
    assert ref.clip is None
    data = World(12, seed=3)
    loader = torch.utils.data.DataLoader(data, batch_size=5, shuffle=False)
    for source in (data, loader, torch.from_numpy(images).permute(0, 3, 1, 2)):
        got = collect(dm, source, preprocess=pre, batch_size=5, progress=False)
        assert torch.allclose(got.contributions, ref.contributions, atol=1e-5)
    with pytest.raises(InputError, match="shuffle=False"):
        collect(dm, torch.utils.data.DataLoader(data, batch_size=5, shuffle=True), preprocess=pre, progress=False)


def test_collect_cache_is_keyed_by_everything(tmp_path, tiny_model, world_images):
    rep, dm = tiny_model
    pre = transform_for(rep)
    images = world_images["images"]
    first = collect(dm, images[:10], preprocess=pre, cache=tmp_path, progress=False)
    again = collect(dm, images[:10], preprocess=pre, cache=tmp_path, progress=False)
    assert len(list(tmp_path.iterdir())) == 1 and torch.equal(first.contributions, again.contributions)
    other = collect(dm, images[10:20], preprocess=pre, cache=tmp_path, progress=False)  # same size, other images
    assert len(list(tmp_path.iterdir())) == 2 and not torch.allclose(other.contributions, first.contributions)

    def flipped(x):
        return pre(x.flip(-1))

    collect(dm, images[:10], preprocess=flipped, cache=tmp_path, progress=False)
    assert len(list(tmp_path.iterdir())) == 3
    with pytest.raises(InputError, match="key="):
        collect(dm, [images[i] for i in range(3)], preprocess=pre, cache=tmp_path, progress=False)


def test_training_from_a_stream(tiny_model, world_clip, world_images):
    rep, dm = tiny_model
    stream = ImageBatches(dm, world_images["images"][:16], preprocess=transform_for(rep), clip=world_clip, batch_size=8,
                    shuffle_seed=0)
    assert len(stream) == 2
    aligner = CompAlign(dm.components, 32, world_clip.dim)
    feats = collect(dm, world_images["images"][:16], preprocess=transform_for(rep), clip=world_clip, progress=False)
    before = heldout_cosine(aligner, feats)
    hist = aligner.fit(stream, epochs=4, lr=1e-2, progress=False)
    assert len(hist["cos"]) == 4 and hist["cos"][-1] < hist["cos"][0]
    assert heldout_cosine(aligner, feats) > before + 0.05  # it learned the very images the stream gave it
    with pytest.raises(InputError, match="other components"):
        CompAlign(len(dm.components), 32, world_clip.dim).fit(stream, epochs=1, progress=False)
    with pytest.warns(DeprecationWarning, match="ImageBatches"):  # the old name, for one release
        old = Stream(dm, world_images["images"][:16], preprocess=transform_for(rep), clip=world_clip, batch_size=8,
                     shuffle_seed=5)
    new = ImageBatches(dm, world_images["images"][:16], preprocess=transform_for(rep), clip=world_clip,
                       batch_size=8, shuffle_seed=5)
    for (c0, e0), (c1, e1) in zip(old, new, strict=True):
        assert torch.equal(c0, c1) and torch.equal(e0, e1)


def test_world_clip_space(world_clip, world_images):
    assert world_clip.dim == 64 and len(world_clip.templates) >= 2
    t = world_clip.encode_texts(["red", "sea"])
    assert t.shape == (2, 64) and torch.allclose(t.norm(dim=1), torch.ones(2), atol=1e-5)
    single = world_clip.encode_texts(["red"], templates=("a photo of a {} object",))
    assert not torch.allclose(single, t[:1])
    emb = world_clip.encode_images(world_images["images"][:4])
    again = world_clip.encode_images(torch.from_numpy(world_images["images"][:4]).permute(0, 3, 1, 2).float() / 255)
    assert torch.allclose(emb, again, atol=1e-5)


def test_open_clip_space_uses_its_templates_and_preprocessing():
    import open_clip

    space = ClipSpace.from_open_clip("ViT-S-32", random_weights=True)  # offline
    assert space.dim == space.model.visual.output_dim
    try:
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
    except ImportError:
        from open_clip import OPENAI_IMAGENET_TEMPLATES
    assert space.templates == tuple(OPENAI_IMAGENET_TEMPLATES) and len(space.templates) == 80
    x = space.preprocess(torch.zeros(2, 3, 40, 50, dtype=torch.uint8))
    assert x.shape[-2:] == tuple(space.model.visual.image_size)
    t = space.encode_texts(["dog"])  # through all 80 templates
    two = space.encode_texts(["dog", "cat"], templates=("a photo of a {}.", lambda c: f"a {c}"))
    assert t.shape == (1, space.dim) and two.shape == (2, space.dim)
    assert torch.allclose(torch.cat([t, two]).norm(dim=1), torch.ones(3), atol=1e-5)
    assert space.encode_images(np.zeros((2, 50, 40, 3), np.uint8)).shape == (2, space.dim)
    # each description: every template's normalised embedding, averaged, normalised again
    tok = open_clip.get_tokenizer("ViT-S-32")
    with torch.no_grad():
        raw = F.normalize(space.model.encode_text(tok(["a photo of a dog.", "a dog"])).float(), dim=-1)
    torch.testing.assert_close(two[0], F.normalize(raw.mean(0), dim=0), rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="no model"):
        ClipSpace.from_open_clip("not-a-clip")


def heldout_cosine(aligner, feats) -> float:
    with torch.no_grad():
        return float(F.cosine_similarity(aligner.aligned(feats), feats.clip, dim=-1).mean())


def test_features_validate_shapes():
    with pytest.raises(InputError):
        Features(torch.zeros(4, 3, 2), None, table(2))
    with pytest.raises(InputError):
        Features(torch.zeros(4, 3, 2), torch.zeros(5, 8), table(3))


# -- order-free scores, variance share, readout effects, finer maps --------------------------------------
@pytest.mark.parametrize("method", ["paper", "share"])
def test_scores_do_not_depend_on_the_order_of_the_descriptions(method):
    aligned, texts = synthetic_aligned(seed=4)
    ps = property_scores(aligned, ["x", "y", "z"], text_embeddings=texts, method=method)
    for perm in ([2, 1, 0], [1, 2, 0]):
        other = property_scores(aligned, [["x", "y", "z"][i] for i in perm], text_embeddings=texts[perm],
                                method=method)
        for name in aligned.names:
            assert other[name] == pytest.approx(ps[name], abs=1e-12)


def test_variance_shares_add_up_to_one_and_weigh_size():
    aligned, texts = synthetic_aligned(seed=5)
    share = property_scores(aligned, ["x", "y", "z"], text_embeddings=texts, method="share")
    assert sum(share.values()) == pytest.approx(1.0, abs=1e-12)
    assert share["comp3"] == pytest.approx(0.0, abs=1e-12)  # the constant
    # a tiny copy of a strong component correlates perfectly but holds almost none of the variance
    tiny = aligned.mapped.clone()
    tiny = torch.cat([tiny, 1e-3 * tiny[:, :1]], 1)
    more = Aligned(tiny, aligned.names + ["tiny"])
    paper = property_scores(more, ["x"], text_embeddings=texts[:1], method="paper")
    share = property_scores(more, ["x"], text_embeddings=texts[:1], method="share")
    assert paper["tiny"] == pytest.approx(paper["comp0"], abs=1e-9) and paper["tiny"] > 0.5
    assert share["tiny"] < 0.01 * share["comp0"]
    with pytest.raises(InputError, match="method"):
        property_scores(aligned, ["x"], text_embeddings=texts[:1], method="qr")


def test_readout_effects_add_up_to_ablating_everything():
    g = torch.Generator().manual_seed(0)
    n, c, d = 400, 4, 6
    y = torch.randint(0, 3, (2 * n,), generator=g)
    contrib = torch.randn(2 * n, c, d, generator=g, dtype=torch.float64)
    contrib[:, 1, :3] += 2.0 * F.one_hot(y, 3).double()  # component 1 writes the attribute
    effects = readout_effects(contrib[:n], y[:n], contrib[n:], y[n:])
    assert int(np.argmax(effects)) == 1 and effects[1] > 0.5
    w, b = fit_probe(contrib[:n].sum(1), y[:n])
    margin = lambda x: ((x @ w + b).gather(1, y[n:, None])[:, 0] - (x @ w + b).mean(1))  # noqa: E731
    ablated = contrib[:n].mean(0).sum(0).expand(n, d)
    drop = float((margin(contrib[n:].sum(1)) - margin(ablated)).mean())
    assert effects.sum() == pytest.approx(drop, rel=1e-9)
    acc = probe_accuracy(contrib[:n].sum(1), y[:n], contrib[n:].sum(1), y[n:])
    assert acc == pytest.approx(float(((contrib[n:].sum(1) @ w + b).argmax(1) == y[n:]).double().mean()))


def test_finer_components_are_read_with_their_heads_map(tiny_vit):
    head = fxdecomp.decompose(tiny_vit, "head")
    token = fxdecomp.decompose(tiny_vit, "token")
    aligner = CompAlign(head.components, 32, 5, seed=2)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fine, coarse = token(x), head(x)
    mapped = aligner.map_finer(fine)
    # the tokens of a head, each mapped by the head's map, add up to the head mapped
    regrouped = torch.zeros_like(aligner(coarse))
    names = coarse.components.names
    for c in fine.components:
        key = c.ancestors()[0] if c.ancestors() and c.ancestors()[0] in names else c.name
        regrouped[:, names.index(key)] += mapped[:, c.index]
    torch.testing.assert_close(regrouped, aligner(coarse), rtol=1e-4, atol=1e-5)
    other = CompAlign(["x"], 32, 5)
    with pytest.raises(InputError, match="no map for component"):
        other.map_finer(fine)


def test_one_type_from_a_batch_to_a_data_set_to_clip_space(tiny_vit, tiny_model, world_images):
    """``collect`` returns a ``Decomposition`` with the model's outputs (its error is measured, not 0 by
    construction); ``map(aligner)`` is a view in CLIP space that groups like any other; ``CompAlign.map`` gives
    the same vectors under the older names, and an ``Aligned`` looks its components up as a decomposition does."""
    from fxdecomp import Decomposition, UnknownComponentError

    rep, dm = tiny_model
    feats = collect(dm, world_images["images"][:6], preprocess=transform_for(rep), progress=False)
    assert isinstance(feats, Decomposition) and len(feats) == 6 and feats.output.shape == (6, 32)
    with torch.no_grad():
        direct = dm(transform_for(rep)(torch.from_numpy(world_images["images"][:6]).permute(0, 3, 1, 2)))
    torch.testing.assert_close(feats.output, direct.output, rtol=0, atol=0)
    assert 0 < feats.error() < 1e-5 and feats.error() == pytest.approx(direct.error(), rel=1e-6)
    assert feats.take([4, 1]).error() <= feats.error()

    aligner = CompAlign(dm.components, 32, 5, seed=3)
    view = feats.map(aligner)
    old = aligner.map(feats)
    assert view.space == "clip" and view.output is None and isinstance(old, Aligned) and isinstance(old, Decomposition)
    torch.testing.assert_close(view.contributions, old.mapped, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(view.total(), aligner.aligned(feats), rtol=1e-5, atol=1e-6)  # the bias is in
    with pytest.raises(InputError, match="no output"):
        view.error()
    with pytest.raises(InputError, match="already in clip space"):
        view.map(aligner)
    # grouping commutes with the (linear, per-component) maps, up to the bias, added once
    by_layer = view.group("layer")
    torch.testing.assert_close(by_layer.total(), view.total(), rtol=1e-5, atol=1e-5)
    assert by_layer.names == feats.group("layer").names
    assert old.components[3] == feats.components[3]  # the data's labels, kinds included
    assert old.index("blocks.1.attn[h1]") == feats.names.index("blocks.1.attn[h1]")
    with pytest.raises(UnknownComponentError, match="Did you mean"):
        old.component("blocks.1.attn[h9]")

    # finer data through the heads' maps: mapping then grouping by head is the head decomposition mapped
    head = fxdecomp.decompose(tiny_vit, "head")
    token = fxdecomp.decompose(tiny_vit, "token")
    per_head = CompAlign(head.components, 32, 5, seed=2)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fine, coarse = token(x), head(x)
    grouped = fine.map(per_head).group("head")
    assert grouped.names == coarse.names
    torch.testing.assert_close(grouped.contributions, per_head(coarse), rtol=1e-4, atol=1e-5)
