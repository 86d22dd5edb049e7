"""The training code runs end to end (tiny models, a few steps) and what it saves loads back."""
from __future__ import annotations

import json

import torch
from safetensors import safe_open

from fxdecomp.world import evaluate, models, train
from fxdecomp.world.dataset import World


def _data(n=128, **kw):
    return World(n, seed=21, **kw).arrays()


def test_classifier_training_lowers_the_loss_and_saves_a_record(tmp_path):
    data = _data()
    model = models.vit(width=32, depth=1, heads=2)
    before = evaluate.classifier_metrics(model, data)
    train.train_classifier(model, data, torch.device("cpu"), epochs=6, batch=32, lr=3e-3)
    after = evaluate.classifier_metrics(model, data)
    assert sum(after.values()) > sum(before.values())
    train.save(tmp_path, "tiny", model, after, {"epochs": 6}, extra={"probe.weight": torch.zeros(2, 2)})
    with safe_open(str(tmp_path / "tiny.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["record"])["metrics"] == after
        assert "probe.weight" in f.keys()


def test_self_supervised_training_and_probe():
    data = _data()
    model = models.vit(num_classes=0, width=32, depth=1, heads=2)
    train.train_ssl(model, data, torch.device("cpu"), epochs=1, batch=32)
    probe = train.fit_probe(model, data, torch.device("cpu"), steps=50)
    metrics = evaluate.probe_metrics(model, probe, data)
    assert metrics["colour"] > 0.3  # colour is linearly readable even after a few steps


def test_clip_training_step_runs():
    data = _data(64)
    model = models.clip()
    tok = models.tokenizer()
    train.train_clip(model, tok, data, torch.device("cpu"), epochs=1, batch=32)
    metrics = evaluate.zero_shot_metrics(model, tok, data)
    assert set(metrics) == {"shape", "colour", "pattern", "location", "size"}


def test_spurious_head_training_keeps_the_backbone():
    data = _data(128, spurious=0.95)
    model = models.vit(num_classes=2, width=32, depth=1, heads=2)
    backbone = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("head.")}
    train.train_spurious(model, data, torch.device("cpu"), epochs=2, batch=32)
    for k, v in backbone.items():
        assert torch.equal(model.state_dict()[k], v), k
    assert all(p.requires_grad for p in model.parameters())


def test_views_are_new_images_of_the_same_size():
    x = evaluate.to_input(_data(8)["images"])
    v = train._views(x)
    assert v.shape == x.shape and not torch.equal(v, x)


def test_fit_logs_one_loss_per_step_and_main_keeps_clip_l_opt_in():
    data = _data(64)
    model = models.vit(width=32, depth=1, heads=2)
    log = []
    t = train._on(torch.device("cpu"), data)

    def loss(idx):
        logits = models.split_logits(model(evaluate.to_input(t["images"][idx])))["colour"]
        return torch.nn.functional.cross_entropy(logits, t["colour"][idx])

    train._fit(model, list(model.parameters()), loss, 64, epochs=2, batch=16, lr=1e-3, device="cpu", desc="t", log=log)
    assert len(log) == 8 and all(v > 0 for v in log)
    # the old models' recipe and default set are unchanged; world-clip-l is trained only when named
    assert train.ALL == ("vit", "swin", "ssl", "clip", "spurious") and train.CHOICES[-1] == "clip-l"
