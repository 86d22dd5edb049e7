"""fxdecomp.spurious: ranking by words, exact mean-ablation, k chosen on validation, and a user's
Waterbirds-layout folder with a model from a local checkpoint."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

import fxdecomp
from fxdecomp import InputError
from fxdecomp.align import Aligned, ClipSpace
from fxdecomp.data import WaterbirdsFolder, WorldSpurious
from fxdecomp.models_registry import load as load_model
from fxdecomp.spurious import (
    Split,
    component_means,
    find_and_remove,
    group_accuracies,
    mean_ablate,
    random_rankings,
    ranked,
    readout_ranking,
    remove_spurious,
    spurious_scores,
)


def test_mean_ablation_changes_only_the_ablated_components():
    g = torch.Generator().manual_seed(0)
    c = torch.randn(20, 5, 3, generator=g, dtype=torch.float64)
    means = component_means(c[:10])
    out = mean_ablate(c, means, [1, 3])
    want = c[:, [0, 2, 4]].sum(1) + means[1] + means[3]
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(mean_ablate(c, means, []), c.sum(1))
    # an exact edit: the change is a constant only where the ablated components are constant
    flat = c.clone()
    flat[:, 1] = means[1]
    torch.testing.assert_close(mean_ablate(flat, means, [1]), flat.sum(1))
    with pytest.raises(InputError, match="same decomposition"):
        mean_ablate(c, means[:4], [0])


def test_group_accuracies_and_missing_groups():
    logits = torch.tensor([[1.0, 0], [0, 1], [1, 0], [1, 0]])
    acc = group_accuracies(logits, [0, 1, 1, 0], [0, 1, 2, 3])
    assert acc == {"worst": 0.0, "average": 0.75, "groups": [1.0, 1.0, 0.0, 1.0]}
    with pytest.raises(InputError, match="group"):
        group_accuracies(logits, [0, 1, 1, 0], [0, 1, 1, 0], n_groups=4)


def planted_world(n, seed, agree: float):
    """Label y, place p (agreeing with y with probability ``agree``); component 0 writes the label,
    component 1 the place, components 2-4 vary but write nothing the classifier reads."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.where(rng.random(n) < agree, y, 1 - y)
    if agree == 0.5:  # exactly balanced groups
        y, p = np.arange(n) % 2, (np.arange(n) // 2) % 2
    s = lambda v: torch.from_numpy(2.0 * v - 1)  # noqa: E731
    c = torch.zeros(n, 5, 2, dtype=torch.float64)
    c[:, 0, 1] = 1.0 * s(y) + 0.9 * torch.from_numpy(rng.standard_normal(n))
    c[:, 1, 1] = 1.5 * s(p)
    c[:, 2:, 0] = c[:, 2:, 1] = 0.3 * torch.from_numpy(rng.standard_normal((n, 3)))  # cancels in the margin
    return c, y, p


def planted_aligned(c, y, p, texts):
    """Each component's aligned contribution: component 0 along the label words' difference, 1 along
    the place words', the rest along a direction no word has."""
    n = len(y)
    t = torch.from_numpy
    mapped = torch.zeros(n, 5, texts.shape[1], dtype=torch.float64)
    mapped[:, 0] = t(2.0 * y - 1).unsqueeze(1) * (texts[2] - texts[3]) + 0.2 * c[:, 0, 1:2]
    mapped[:, 1] = t(2.0 * p - 1).unsqueeze(1) * (texts[0] - texts[1])
    for i in range(2, 5):
        mapped[:, i] = c[:, i, 0:1] * texts[4]
    return Aligned(mapped, [f"comp{i}" for i in range(5)])


def test_a_component_carrying_only_the_place_is_the_first_ablated():
    texts = F.normalize(torch.eye(6, dtype=torch.float64)[:5] + 0.05, dim=1)  # water, land, round, pointed, other
    train, val, test = planted_world(600, 0, 0.95), planted_world(400, 1, 0.5), planted_world(400, 2, 0.5)
    names = [f"comp{i}" for i in range(5)]
    scores = spurious_scores(planted_aligned(*train, texts), ["water", "land"], ["round", "pointed"],
                             text_embeddings=(texts[:2], texts[2:4]))
    ranking = ranked(scores)
    assert ranking[0] == "comp1" and ranking[-1] == "comp0"
    splits = [Split(c, y, 2 * y + p) for c, y, p in (train, val, test)]
    oracle = readout_ranking(train[0], train[2], val[0], val[2], names)
    assert oracle[0] == "comp1"
    res = remove_spurious(names, ranking, *splits, max_k=4, random_draws=20, oracle=oracle)
    assert res.k == 1 and res.ablated == ["comp1"]
    assert res.before["worst"] < 0.5 < 0.8 < res.after["worst"]
    assert res.random_after["worst"] < res.after["worst"] - 0.2
    assert res.oracle_after["worst"] == res.after["worst"]
    assert set(res.summary()) >= {"worst_before", "worst_after", "avg_before", "avg_after", "random_worst_after",
                                  "oracle_worst_after", "k"}
    assert "worst-group" in res.table()
    # k is chosen on validation: the curve there peaks at k = 1
    val_curve = res.curves["validation"]["score"]
    assert int(np.argmax(val_curve)) == 1 and len(val_curve) == 5


def test_rankings_are_seeded_permutations():
    a, b = random_rankings(["a", "b", "c", "d"], 3, seed=1), random_rankings(["a", "b", "c", "d"], 3, seed=1)
    assert a == b and all(sorted(r) == ["a", "b", "c", "d"] for r in a)
    with pytest.raises(InputError, match="at least one description"):
        spurious_scores(None, [], ["x"])


def test_a_split_without_every_group_is_refused():
    c, y, p = planted_world(50, 0, 0.5)
    one_place = Split(c, y, 2 * y)
    with pytest.raises(InputError, match="group"):
        remove_spurious([f"comp{i}" for i in range(5)], ["comp1"], one_place, one_place, one_place)
    with pytest.raises(InputError, match="not components"):
        remove_spurious(["a"], ["comp1"], one_place, one_place, one_place)


def write_waterbirds(root, n_per_split=(24, 16, 16)):
    """A small Waterbirds-layout folder of world images (shape family = y, background = place)."""
    rows = [("img_filename", "y", "place", "split")]
    for split, (n, spurious, seed) in enumerate(zip(n_per_split, (0.95, 0.5, 0.5), (31, 32, 33))):
        data = WorldSpurious(n, seed, spurious)
        for i in range(n):
            img = data[i]["image"].permute(1, 2, 0).numpy()
            name = f"{('land', 'water')[int(data.places[i] == 0)]}/{split}_{i:03d}.jpg" if i % 2 else \
                f"{split}_{i:03d}.png"
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).resize((80, 72)).save(root / name)
            rows.append((name, int(data.targets[i]), int(data.places[i]), split))
    with open(root / "metadata.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)


def test_a_waterbirds_folder_and_a_local_checkpoint(tmp_path):
    write_waterbirds(tmp_path / "wb")
    ckpt = tmp_path / "spurious.safetensors"
    ref = load_model("world-spurious")
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(ckpt))
    model = load_model("timm:vit_tiny_patch16_224", checkpoint=ckpt, img_size=64, patch_size=8, embed_dim=128,
                       depth=6, num_heads=4, num_classes=2)
    model.pretrained_cfg = dict(model.pretrained_cfg, mean=(0.5,) * 3, std=(0.25,) * 3, input_size=(3, 64, 64))
    splits = [WaterbirdsFolder(tmp_path / "wb", s, size=64) for s in ("train", "val", "test")]
    assert [len(s) for s in splits] == [24, 16, 16]
    assert set(splits[1].groups.tolist()) == {0, 1, 2, 3}
    from fxdecomp.world.captions import WORDS

    run = find_and_remove(model, *splits, clip=ClipSpace.world(), spurious_words=[w[0] for w in
                          WORDS["location"].values()], label_words=[w[0] for w in WORDS["shape"].values()],
                          epochs=1, max_k=4, random_draws=3, batch_size=16, progress=False)
    summary = run.removal.summary()
    assert run.aligner.variant == "shared" and run.aligner.lam == 0.0  # rankings read a shared map
    assert 0 <= summary["k"] <= 4 and len(run.removal.ablated) == summary["k"]
    assert run.oracle is not None and set(run.ranking) == set(run.oracle)
    # the classifier's own accuracy on the folder's test split, before any ablation, is what it really scores
    x = torch.stack([fxdecomp.models_registry.transform_for(model)(splits[2][i]["image"])[0]
                     for i in range(len(splits[2]))])
    with torch.no_grad():
        logits = model(x)
    assert summary["worst_before"] == pytest.approx(group_accuracies(logits, splits[2].targets,
                                                                     splits[2].groups)["worst"])
    # a validation split where every place agrees with the label has no worst group to measure
    agree = tmp_path / "agree"
    agree.mkdir()
    with open(tmp_path / "wb" / "metadata.csv") as f:
        rows = list(csv.reader(f))
    kept = [rows[0]] + [[f"../wb/{r[0]}", *r[1:]] for r in rows[1:] if r[1] == r[2]]
    with open(agree / "metadata.csv", "w", newline="") as f:
        csv.writer(f).writerows(kept)
    val = WaterbirdsFolder(agree, "val", size=64)
    with pytest.raises(InputError, match=r"group\(s\) \[1, 2\]"):
        find_and_remove(model, splits[0], val, splits[2], clip=ClipSpace.world(), spurious_words=["sea"],
                        progress=False)
