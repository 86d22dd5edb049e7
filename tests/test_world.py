"""The synthetic world: images agree with their attributes, splits are what they claim,
and every shipped model still measures what it was recorded at."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import fxdecomp
from fxdecomp.world import evaluate, shipped
from fxdecomp.world.attributes import CATEGORICAL, COLOURS, LOCATION_FAMILY, SHAPE_FAMILY, SIZES
from fxdecomp.world.captions import WORDS, WordTokenizer, prompts
from fxdecomp.world.dataset import World
from fxdecomp.world.render import shade


def _pixels(img, mask):
    colours, counts = np.unique(img[mask].reshape(-1, 3), axis=0, return_counts=True)
    return {tuple(int(v) for v in c): int(n) for c, n in zip(colours, counts)}


def test_seeds_reproduce_and_differ():
    a, b = World(8, seed=3), World(8, seed=3)
    for i in range(8):
        x, y = a[i], b[i]
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["mask"], y["mask"])
        assert x["caption"] == y["caption"] and x["labels"] == y["labels"]
    assert not torch.equal(World(8, seed=4)[0]["image"], a[0]["image"])
    with pytest.raises(IndexError):
        a[8]


def test_object_pixels_carry_the_colour_and_pattern():
    world = World(300, seed=5)
    for i in range(300):
        attrs, img, mask, _ = world.raw(i)
        colours = _pixels(img, mask)
        main, second = COLOURS[attrs.colour], shade(COLOURS[attrs.colour])
        if attrs.pattern == "solid":
            assert set(colours) == {main}, attrs
        else:
            assert set(colours) <= {main, second} and main in colours, attrs
            share = colours[main] / mask.sum()
            low = 0.35 if attrs.pattern == "checkered" else 0.5
            assert share > low, (attrs, share)
            assert second in colours or mask.sum() < 30, attrs


def test_masks_are_the_objects():
    world = World(300, seed=6)
    areas = {s: [] for s in SIZES}
    for i in range(300):
        attrs, img, mask, _ = world.raw(i)
        ys, xs = np.nonzero(mask)
        # regular shapes: the mask's centroid is the object's centre
        assert abs(xs.mean() + 0.5 - attrs.cx * 64) < 1.5 and abs(ys.mean() + 0.5 - attrs.cy * 64) < 1.5, attrs
        assert (xs.max() - xs.min()) <= 2.2 * attrs.radius + 2  # a cross reaches 1.06 r
        if attrs.shape == "circle":
            assert abs(mask.sum() / (np.pi * attrs.radius ** 2) - 1) < 0.15
        areas[attrs.size].append(mask.sum() / attrs.radius ** 2 * attrs.radius ** 2)
        # outside the mask nothing is painted in the object's exact colours (backgrounds are noisy)
        outside = _pixels(img, ~mask)
        assert outside.get(COLOURS[attrs.colour], 0) < 0.02 * (~mask).sum()
    means = [np.mean(areas[s]) for s in ("small", "medium", "large")]
    assert means[0] < means[1] < means[2]


def test_backgrounds_match_their_location():
    world = World(240, seed=8)
    stats = {loc: [] for loc in CATEGORICAL["location"]}
    for i in range(240):
        attrs, img, mask, _ = world.raw(i)
        stats[attrs.location].append(img[~mask].reshape(-1, 3).mean(0))
    centres = {k: np.mean(v, 0) for k, v in stats.items()}
    # every background is recognisable by its mean colour alone
    for k, v in stats.items():
        for m in v:
            nearest = min(centres, key=lambda c: np.linalg.norm(centres[c] - m))
            assert nearest == k
    water = [k for k in centres if LOCATION_FAMILY[k] == "water"]
    assert all(centres[k][2] > centres[k][0] for k in water)  # water is bluer than red


def test_captions_describe_the_image():
    world = World(200, seed=9)
    for i in range(200):
        attrs, _, _, text = world.raw(i)
        for attr in ("shape", "colour", "location"):
            assert any(w in text for w in WORDS[attr][getattr(attrs, attr)]), (attr, text)


def test_spurious_split_correlation_and_balanced_groups():
    train = World(2000, seed=11, spurious=0.95).arrays()
    agree = np.isin(train["group"], [0, 3]).mean()  # (round, water) and (pointed, land)
    assert 0.93 < agree < 0.97
    test = World(400, seed=13, spurious=0.5).arrays()
    assert np.bincount(test["group"]).tolist() == [100, 100, 100, 100]
    world = World(50, seed=13, spurious=0.5)
    for i in range(50):
        a = world.attributes(i)
        item = world[i]
        assert ["round", "pointed"][item["target"]] == SHAPE_FAMILY[a.shape]


def test_tokenizer_puts_end_of_text_last():
    tok = WordTokenizer()
    ids = tok(["a red star in the sea", "unknownword"])
    assert ids.shape == (2, tok.context_length)
    assert int(ids[0].argmax()) == 7 and ids.max() == tok.eot == tok.vocab_size - 1
    assert ids[1, 1] == 1  # unknown word
    assert len(prompts("colour")) == len(CATEGORICAL["colour"])


@pytest.fixture(scope="module")
def eval_data():
    return evaluate.eval_split()


TOL = 0.01


@pytest.mark.parametrize("name", ["world-vit", "world-swin"])
def test_classifiers_reproduce_recorded_accuracy(name, eval_data):
    got = evaluate.classifier_metrics(fxdecomp.models_registry.load(name), eval_data)
    want = shipped.record(name)["metrics"]
    assert got.keys() == want.keys()
    for k in want:
        assert abs(got[k] - want[k]) <= TOL, (k, got[k], want[k])
    assert min(got.values()) > 0.8


def test_self_supervised_probe_reproduces_recorded_accuracy(eval_data):
    got = evaluate.probe_metrics(fxdecomp.models_registry.load("world-ssl"), shipped.load_probe(), eval_data)
    want = shipped.record("world-ssl")["metrics"]
    for k in want:
        assert abs(got[k] - want[k]) <= TOL, (k, got[k], want[k])


def test_clip_zero_shot_reproduces_recorded_accuracy(eval_data):
    model, tok = shipped.load_clip()
    got = evaluate.zero_shot_metrics(model, tok, eval_data)
    want = shipped.record("world-clip")["metrics"]
    for k in want:
        assert abs(got[k] - want[k]) <= TOL, (k, got[k], want[k])
    chance = {k: 1 / len(v) for k, v in CATEGORICAL.items()}
    assert all(got[k] > chance[k] + 0.15 for k in got)
    visual = fxdecomp.models_registry.load("world-clip")
    x = evaluate.to_input(eval_data["images"][:4])
    with torch.no_grad():
        assert torch.allclose(visual(x), model.encode_image(x), atol=1e-6)


def test_spurious_classifier_reproduces_recorded_group_accuracy():
    got = evaluate.spurious_metrics(fxdecomp.models_registry.load("world-spurious"))
    want = shipped.record("world-spurious")["metrics"]
    for k in want:
        assert abs(got[k] - want[k]) <= TOL, (k, got[k], want[k])
    assert got["worst_group"] < got["average_group"] - 0.1  # the shortcut shows


def test_shipped_vit_decomposes_exactly_on_world_images(eval_data):
    model = fxdecomp.models_registry.load("world-vit")
    dm = fxdecomp.decompose(model, "token", layers=[5])
    x = evaluate.to_input(eval_data["images"][:6])
    with torch.no_grad():
        out = dm(x)
        assert out.error() < 1e-5
        assert torch.allclose(out.total(), model(x), atol=1e-4)


def test_unknown_shipped_name():
    with pytest.raises(fxdecomp.InputError, match="world-vit"):
        shipped.path("world-resnet")
