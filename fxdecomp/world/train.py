"""Train the world's models and write them as safetensors plus a metrics record.

    python -m fxdecomp.world.train --out fxdecomp/assets/world                  # all models but clip-l
    python -m fxdecomp.world.train --out /tmp/w --models vit --scale 0.05        # a quick smoke run
    python -m fxdecomp.world.train --out fxdecomp/assets/world --models clip-l   # world-clip-l (GPU)

Models: ``vit`` (supervised multi-attribute ViT), ``swin`` (supervised
multi-attribute Swin), ``ssl`` (self-supervised ViT, SimCLR-style, with a
linear probe), ``clip`` (contrastive image/text model on captions),
``spurious`` (ViT trained on the Waterbirds-style split) and ``clip-l`` (the
wide CLIP, trained against feature suppression: see ``train_clip_l``; not part
of the default set, it needs a GPU: ``--models clip-l``). ``--scale`` shrinks
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

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from . import evaluate, models
from .attributes import CATEGORICAL, SIZES, Attributes, sample
from .captions import group_captions, prompts
from .dataset import PROBE_SEED, SPURIOUS_TRAIN_SEED, TRAIN_SEED, World
from .render import render

ALL = ("vit", "swin", "ssl", "clip", "spurious")
#: What ``--models`` accepts; ``clip-l`` is trained only when asked for (it needs a GPU).
CHOICES = ALL + ("clip-l",)
TRAIN_SIZE = 60_000
SPURIOUS_SIZE = 20_000
PROBE_SIZE = 5_000


def _schedule(opt, steps: int, warmup: int):
    def lr(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(opt, lr)


def _fit(model, params, loss_fn, n: int, epochs: int, batch: int, lr: float, device, desc: str, wd: float = 0.05,
         log: list | None = None):
    """Shared AdamW + warmup-cosine loop over shuffled indices; ``loss_fn(idx)`` returns a loss
    (appended to ``log`` at every step when given)."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    steps = epochs * (n // batch)
    sched = _schedule(opt, steps, warmup=max(1, steps // 20))
    gen = torch.Generator().manual_seed(0)
    model.train()
    bar = tqdm(total=steps, desc=desc, unit="step", mininterval=2.0, disable=None)  # quiet when stderr is no terminal
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
            if log is not None:
                log.append(loss.item())
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


# -- world-clip-l: contrastive training against feature suppression ------------------------------
#
# A contrastive loss learns only what tells the captions of a batch apart. In random batches
# colour, shape and location already do, so size (and, for a small model, shape) is never needed
# and never learnt: feature suppression. Three changes make every attribute needed:
#   1. hard negatives: images come in groups, an anchor and one variant per attribute that changes
#      that attribute alone (same position, angle and texture seed), trained in the same batch;
#   2. every attribute weighs: a zero-shot cross-entropy per attribute, image embeddings against
#      the embeddings of that attribute's prompts, added to the caption loss;
#   3. prompts match captions: captions name all five attributes, most in a zero-shot prompt's words.

#: Images per contrast group: an anchor and one variant per attribute.
GROUP = 1 + len(CATEGORICAL)
CLIP_L_EPOCHS = 40
CLIP_L_BATCH = 85 * GROUP  # 510 images, whole groups
CLIP_L_LR = 5e-4
#: Weight of the mean per-attribute zero-shot loss against the caption loss.
ATTRIBUTE_WEIGHT = 1.0
CLIP_L_OBJECTIVE = ("contrastive image/caption loss over batches of contrast groups (an anchor and one "
                    "variant per attribute, differing in that attribute alone), images with identical "
                    "attributes counted as positives; plus the mean over attributes of a zero-shot "
                    "cross-entropy against that attribute's prompts")


def vary(attrs: Attributes, attr: str, rng: np.random.Generator, image_size: int = 64) -> Attributes:
    """``attrs`` with ``attr`` changed to another of its values, drawn at random. Position, angle
    and the texture seed are kept, so the two images differ in that attribute alone (a new size
    draws a radius in its range and moves the centre only as far as the object needs to fit)."""
    others = [v for v in CATEGORICAL[attr] if v != getattr(attrs, attr)]
    value = others[int(rng.integers(len(others)))]
    if attr != "size":
        return Attributes(**{**attrs.to_dict(), attr: value})
    lo, hi = SIZES[value]
    radius = int(round(rng.integers(lo, hi + 1) * image_size / 64))
    margin = radius / image_size + 0.02
    fit = lambda c: float(min(max(c, margin), 1 - margin))  # noqa: E731
    return Attributes(**{**attrs.to_dict(), "size": value, "radius": radius, "cx": fit(attrs.cx),
                         "cy": fit(attrs.cy)})


def contrast_group(seed: int, g: int) -> tuple[list[Attributes], list[str]]:
    """Group ``g``: attributes of an anchor drawn freely and of one variant per attribute
    (``CATEGORICAL`` order), and their captions; a pure function of ``(seed, g)``."""
    rng = np.random.default_rng([seed, g, 2])  # three entries: never one of World's (seed, i) streams
    anchor = sample(rng)
    members = [anchor] + [vary(anchor, attr, rng) for attr in CATEGORICAL]
    return members, group_captions(members, rng)


def _render_groups(seed: int, bounds: tuple[int, int]) -> dict:
    images, caps, group = [], [], []
    labels: dict[str, list[int]] = {k: [] for k in CATEGORICAL}
    for g in range(*bounds):
        members, texts = contrast_group(seed, g)
        for attrs, text in zip(members, texts):
            images.append(render(attrs)[0])
            caps.append(text)
            group.append(g)
            for k, v in attrs.labels().items():
                labels[k].append(v)
    out = {"images": np.stack(images), "captions": caps, "group": np.asarray(group, dtype=np.int64)}
    out.update({k: np.asarray(v, dtype=np.int64) for k, v in labels.items()})
    return out


def contrast_arrays(n_groups: int, seed: int = TRAIN_SEED, workers: int = 0, chunk: int = 128) -> dict:
    """``n_groups`` contrast groups as arrays (``images``, one label array per attribute,
    ``captions``, ``group``), group by group: images ``GROUP * g`` to ``GROUP * g + GROUP - 1``."""
    from concurrent.futures import ProcessPoolExecutor

    bounds = [(s, min(s + chunk, n_groups)) for s in range(0, n_groups, chunk)]
    if workers and len(bounds) > 1:
        with ProcessPoolExecutor(workers) as pool:
            parts = list(pool.map(_render_groups, [seed] * len(bounds), bounds))
    else:
        parts = [_render_groups(seed, b) for b in bounds]
    return {k: sum((p[k] for p in parts), []) if k == "captions" else np.concatenate([p[k] for p in parts])
            for k in parts[0]}


def prompt_tokens(tokenizer) -> torch.Tensor:
    """Token ids of every attribute's zero-shot prompts (``captions.prompts``), attribute after
    attribute in ``CATEGORICAL`` order: the texts ``evaluate.zero_shot_metrics`` reads with."""
    return tokenizer([p for attr in CATEGORICAL for p in prompts(attr)])


def attribute_logits(model, prompt_ids: torch.Tensor, img: torch.Tensor, scale) -> dict[str, torch.Tensor]:
    """Zero-shot logits per attribute: normalised image embeddings against the normalised text
    embeddings of that attribute's prompts, so the loss trains what the evaluation reads."""
    txt = model.encode_text(prompt_ids, normalize=True)
    out, start = {}, 0
    for attr, values in CATEGORICAL.items():
        out[attr] = scale * img @ txt[start:start + len(values)].T
        start += len(values)
    return out


def clip_l_losses(model, images: torch.Tensor, caption_ids: torch.Tensor, labels: dict[str, torch.Tensor],
                  prompt_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """The caption loss (``"contrastive"``) and one zero-shot loss per attribute for a batch of
    model inputs (``evaluate.to_input``). In the caption loss every caption of an image with the same five
    attributes counts as a match: those captions describe it as well as its own does."""
    img = model.encode_image(images, normalize=True)
    txt = model.encode_text(caption_ids, normalize=True)
    scale = model.logit_scale.exp().clamp(max=100)
    logits = scale * img @ txt.T
    same = torch.stack([labels[k][:, None] == labels[k][None, :] for k in CATEGORICAL]).all(0).float()
    target = same / same.sum(1, keepdim=True)  # symmetric pattern: also the target of logits.T
    out = {"contrastive": (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2}
    for attr, lg in attribute_logits(model, prompt_ids, img, scale).items():
        out[attr] = F.cross_entropy(lg, labels[attr])
    return out


def clip_l_loss(losses: dict[str, torch.Tensor], attribute_weight: float = ATTRIBUTE_WEIGHT) -> torch.Tensor:
    """Caption loss plus the weighted mean of the per-attribute losses."""
    per_attr = torch.stack([losses[k] for k in CATEGORICAL]).mean()
    return losses["contrastive"] + attribute_weight * per_attr


def group_images(groups: torch.Tensor) -> torch.Tensor:
    """Indices of the images of ``groups`` in ``contrast_arrays`` data: a batch is whole groups,
    so every image meets the variants that differ from it in one attribute."""
    return (groups[:, None] * GROUP + torch.arange(GROUP, device=groups.device)).flatten()


def train_clip_l(model, tokenizer, data: dict, device, epochs: int, batch: int = CLIP_L_BATCH,
                 lr: float = CLIP_L_LR, attribute_weight: float = ATTRIBUTE_WEIGHT, log: list | None = None):
    """Train on ``contrast_arrays`` data: batches of whole groups (``batch // GROUP`` of them,
    shuffled each epoch), loss ``clip_l_loss``. Per-step losses go to ``log`` when given."""
    if len(data["images"]) % GROUP or batch < GROUP:
        raise ValueError(f"train_clip_l takes contrast_arrays() data and a batch of at least {GROUP} images")
    t = _on(device, data)
    captions_ids = tokenizer(data["captions"]).to(device)
    prompt_ids = prompt_tokens(tokenizer).to(device)
    model.to(device)

    def loss(groups):
        idx = group_images(groups.to(device))
        labels = {k: t[k][idx] for k in CATEGORICAL}
        parts = clip_l_losses(model, evaluate.to_input(t["images"][idx]), captions_ids[idx], labels, prompt_ids)
        return clip_l_loss(parts, attribute_weight)

    n_groups = len(t["images"]) // GROUP
    return _fit(model, list(model.parameters()), loss, n_groups, epochs, batch // GROUP, lr, device, "clip-l",
                wd=0.1, log=log)


def run_clip_l(data: dict, device, epochs: int, evals: dict, *, config: dict | None = None,
               batch: int = CLIP_L_BATCH, lr: float = CLIP_L_LR):
    """world-clip-l from ``contrast_arrays`` data: build (``config`` overrides ``models.CLIP_L``),
    train, measure zero-shot on ``evals``; returns (model, metrics, record fields)."""
    model, tok, log = models.clip_l(**(config or {})), models.tokenizer(), []
    train_clip_l(model, tok, data, device, epochs, batch=batch, lr=lr, log=log)
    metrics = evaluate.zero_shot_metrics(model, tok, evals, device)
    k = max(1, len(log) // 10)
    info = {"objective": CLIP_L_OBJECTIVE, "epochs": epochs, "batch": batch, "lr": lr, "group_size": GROUP,
            "attribute_weight": ATTRIBUTE_WEIGHT, "train_images": len(data["images"]), "train_seed": TRAIN_SEED,
            "train_set": "contrast_arrays(train_images // group_size, train_seed)",
            "loss": {"first_steps": round(float(np.mean(log[:k])), 4), "last_steps": round(float(np.mean(log[-k:])), 4),
                     "steps": len(log)},
            "architecture": dict(model.world_config),
            "tokenizer": {"words": tok.words, "context_length": tok.context_length}}
    return model, metrics, info


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
    p.add_argument("--models", nargs="+", choices=CHOICES, default=list(ALL),
                   help="default: all but clip-l (world-clip-l is trained only when named; it needs a GPU)")
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
    train = World(n, TRAIN_SEED).arrays(workers=args.workers) if set(args.models) & set(ALL) - {"spurious"} else None
    contrast = contrast_arrays(n // GROUP, TRAIN_SEED, args.workers) if "clip-l" in args.models else None
    evals = evaluate.eval_split()
    print(f"rendered the training images in {time.time() - t0:.0f} s")
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
        elif name == "clip-l":
            model, metrics, info = run_clip_l(contrast, device, ep(CLIP_L_EPOCHS), evals)
            extra = None
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
