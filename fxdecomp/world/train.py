"""Train the world's models and write them as safetensors plus a metrics record.

    python -m fxdecomp.world.train --out fxdecomp/assets/world            # all models
    python -m fxdecomp.world.train --out /tmp/w --models vit --scale 0.05  # a quick smoke run

Models: ``vit`` (supervised multi-attribute ViT), ``swin`` (supervised
multi-attribute Swin), ``ssl`` (self-supervised ViT, SimCLR-style, with a
linear probe), ``clip`` (contrastive image/text model on captions) and
``spurious`` (ViT trained on the Waterbirds-style split). ``--scale`` shrinks
the training set and epochs proportionally. Each model is written as one
safetensors file whose metadata records how it was trained and its accuracy.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from . import evaluate, models
from .attributes import CATEGORICAL
from .dataset import PROBE_SEED, SPURIOUS_TRAIN_SEED, TRAIN_SEED, World

ALL = ("vit", "swin", "ssl", "clip", "spurious")
TRAIN_SIZE = 60_000
SPURIOUS_SIZE = 20_000
PROBE_SIZE = 5_000


def _schedule(opt, steps: int, warmup: int):
    def lr(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(opt, lr)


def _fit(model, params, loss_fn, n: int, epochs: int, batch: int, lr: float, device, desc: str, wd: float = 0.05):
    """Shared AdamW + warmup-cosine loop over shuffled indices; ``loss_fn(idx)`` returns a loss."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    steps = epochs * (n // batch)
    sched = _schedule(opt, steps, warmup=max(1, steps // 20))
    gen = torch.Generator().manual_seed(0)
    model.train()
    bar = tqdm(total=steps, desc=desc, unit="step", mininterval=2.0)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for s in range(n // batch):
            loss = loss_fn(perm[s * batch:(s + 1) * batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    return model.eval()


def _on(device, arrays: dict) -> dict:
    """Images (uint8) and integer labels as device tensors."""
    out = {"images": torch.from_numpy(arrays["images"]).to(device)}
    for k, v in arrays.items():
        if k not in ("images", "masks", "captions"):
            out[k] = torch.from_numpy(v).to(device)
    return out


def train_classifier(model, data: dict, device, epochs: int, batch: int = 256, lr: float = 1e-3, desc="classifier"):
    t = _on(device, data)
    model.to(device)

    def loss(idx):
        idx = idx.to(device)
        logits = models.split_logits(model(evaluate.to_input(t["images"][idx])))
        return sum(F.cross_entropy(logits[k], t[k][idx], label_smoothing=0.05) for k in CATEGORICAL)

    return _fit(model, list(model.parameters()), loss, len(t["images"]), epochs, batch, lr, device, desc)


def train_spurious(model, data: dict, device, epochs: int, batch: int = 256, lr: float = 1e-2):
    """Train only the classifier head on top of a pretrained backbone, as Waterbirds
    classifiers are trained on pretrained representations."""
    t = _on(device, data)
    model.to(device)
    for p_ in model.parameters():
        p_.requires_grad_(False)
    head = list(model.get_classifier().parameters())
    for p_ in head:
        p_.requires_grad_(True)

    def loss(idx):
        idx = idx.to(device)
        return F.cross_entropy(model(evaluate.to_input(t["images"][idx])), t["target"][idx])

    _fit(model, head, loss, len(t["images"]), epochs, batch, lr, device, "spurious", wd=0.0)
    for p_ in model.parameters():
        p_.requires_grad_(True)
    return model


def _views(x: torch.Tensor) -> torch.Tensor:
    """Random resized crops, flips and a little noise (colour is left alone: it is an attribute)."""
    b = x.shape[0]
    side = torch.empty(b, device=x.device).uniform_(0.6, 1.0)
    tx = (torch.rand(b, device=x.device) * 2 - 1) * (1 - side)
    ty = (torch.rand(b, device=x.device) * 2 - 1) * (1 - side)
    flip = torch.where(torch.rand(b, device=x.device) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = side * flip, tx, side, ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return out + 0.05 * torch.randn_like(out)


def train_ssl(model, data: dict, device, epochs: int, batch: int = 512, lr: float = 1e-3, temperature: float = 0.2):
    t = _on(device, data)
    width = model.num_features
    head = torch.nn.Sequential(torch.nn.Linear(width, 256), torch.nn.GELU(), torch.nn.Linear(256, 64)).to(device)
    model.to(device)

    def loss(idx):
        x = evaluate.to_input(t["images"][idx.to(device)])
        z = F.normalize(head(model(torch.cat([_views(x), _views(x)]))), dim=1)
        sim = z @ z.T / temperature
        n = x.shape[0]
        sim.fill_diagonal_(float("-inf"))
        target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(device)
        return F.cross_entropy(sim, target)

    params = list(model.parameters()) + list(head.parameters())
    return _fit(model, params, loss, len(t["images"]), epochs, batch, lr, device, "ssl")


def fit_probe(model, data: dict, device, steps: int = 500) -> torch.nn.Linear:
    """Linear multi-attribute probe on frozen features."""
    feats = evaluate.batched(model, data["images"], device=device).to(device)
    mu, sd = feats.mean(0), feats.std(0) + 1e-6
    probe = torch.nn.Linear(feats.shape[1], models.N_ATTRIBUTE_LOGITS).to(device)
    opt = torch.optim.Adam(probe.parameters(), lr=1e-2)
    labels = {k: torch.from_numpy(data[k]).to(device) for k in CATEGORICAL}
    z = (feats - mu) / sd
    for _ in range(steps):
        parts = models.split_logits(probe(z))
        loss = sum(F.cross_entropy(parts[k], labels[k]) for k in CATEGORICAL) + 1e-4 * probe.weight.square().sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():  # fold the standardisation into the probe
        probe.weight /= sd
        probe.bias -= (probe.weight * mu).sum(1)
    return probe.cpu().eval()


def train_clip(model, tokenizer, data: dict, device, epochs: int, batch: int = 512, lr: float = 5e-4):
    t = _on(device, data)
    tokens = tokenizer(data["captions"]).to(device)
    model.to(device)

    def loss(idx):
        idx = idx.to(device)
        img = model.encode_image(evaluate.to_input(t["images"][idx]), normalize=True)
        txt = model.encode_text(tokens[idx], normalize=True)
        logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T
        target = torch.arange(len(idx), device=device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2

    return _fit(model, list(model.parameters()), loss, len(t["images"]), epochs, batch, lr, device, "clip", wd=0.1)


def save(out: Path, name: str, model, metrics: dict, info: dict, extra: dict | None = None) -> None:
    """One safetensors file per model; its metadata holds the training and metrics record."""
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for k, v in (extra or {}).items():
        state[k] = v.detach().cpu().contiguous()
    record = {"name": name, "metrics": metrics, **info}
    save_file(state, str(out / f"{name}.safetensors"), metadata={"record": json.dumps(record)})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Train the synthetic world's models.")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--models", nargs="+", choices=ALL, default=list(ALL))
    p.add_argument("--scale", type=float, default=1.0, help="fraction of the training set and epochs")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    args = p.parse_args(argv)
    torch.manual_seed(0)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    n = max(1024, int(TRAIN_SIZE * args.scale))
    ep = lambda e: max(1, round(e * min(1.0, args.scale * 4)))  # noqa: E731
    t0 = time.time()
    train = World(n, TRAIN_SEED).arrays(workers=args.workers)
    evals = evaluate.eval_split()
    print(f"rendered {n} training images in {time.time() - t0:.0f} s")
    common = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "train_images": n, "train_seed": TRAIN_SEED, "eval": f"World({evaluate.EVAL_SIZE}, seed=EVAL_SEED)"}
    for name in args.models:
        torch.manual_seed(0)
        t = time.time()
        if name in ("vit", "swin"):
            model = models.vit() if name == "vit" else models.swin()
            epochs = ep(40)
            train_classifier(model, train, device, epochs, batch=512, lr=1.5e-3, desc=name)
            metrics = evaluate.classifier_metrics(model, evals, device)
            extra, info = None, {"objective": "multi-attribute classification", "epochs": epochs}
        elif name == "ssl":
            model = models.vit(num_classes=0, name="world-ssl")
            epochs = ep(30)
            train_ssl(model, train, device, epochs)
            probe_data = World(max(1024, int(PROBE_SIZE * min(1.0, args.scale * 4))), PROBE_SEED).arrays(args.workers)
            probe = fit_probe(model, probe_data, device)
            metrics = evaluate.probe_metrics(model, probe, evals, device)
            extra = {"probe.weight": probe.weight, "probe.bias": probe.bias}
            info = {"objective": "SimCLR-style contrastive views (crops, flips, noise); linear probe per attribute",
                    "epochs": epochs, "probe_images": len(probe_data["images"]), "probe_seed": PROBE_SEED}
        elif name == "clip":
            model = models.clip()
            epochs = ep(30)
            train_clip(model, models.tokenizer(), train, device, epochs)
            metrics = evaluate.zero_shot_metrics(model, models.tokenizer(), evals, device)
            tok = models.tokenizer()
            extra, info = None, {"objective": "contrastive image/caption (CLIP loss)", "epochs": epochs,
                                 "tokenizer": {"words": tok.words, "context_length": tok.context_length}}
        else:
            model = models.vit(num_classes=2, name="world-spurious")
            backbone = load_file(str(args.out / "world-vit.safetensors"))
            model.load_state_dict({k: v for k, v in backbone.items() if not k.startswith("head.")}, strict=False)
            data = World(max(1024, int(SPURIOUS_SIZE * args.scale)), SPURIOUS_TRAIN_SEED, spurious=0.95)
            arrays = data.arrays(workers=args.workers)
            epochs = ep(6)
            train_spurious(model, arrays, device, epochs)
            metrics = evaluate.spurious_metrics(model, None, device)
            extra, info = None, {"objective": "shape family (round/pointed), background agreeing 95% in training; "
                                              "linear head on the frozen world-vit backbone",
                                 "epochs": epochs, "train_images": len(arrays["images"]),
                                 "train_seed": SPURIOUS_TRAIN_SEED,
                                 "eval": "World(1000, seed=SPURIOUS_TEST_SEED, spurious=0.5): balanced groups"}
        info = {**common, **info, "seconds": round(time.time() - t, 1)}
        save(args.out, f"world-{name}", model.cpu(), metrics, info, extra)
        print(f"world-{name}: {json.dumps({k: round(v, 3) for k, v in metrics.items()})} "
              f"({info['seconds']:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
