"""``fxdecomp demo``: the whole idea on the synthetic world, offline, in about a minute.

Decompose world-vit on world images, check the sum against the model, map every component
into the world CLIP with the shipped aligners, and print the largest components with their
top descriptions (per-component maps) and the property each scores highest on (the shared
map, the one whose rankings hold: docs/ALIGN.md). ``--report DIR`` also decomposes the images
into a run store and writes the HTML report.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from .compiler import decompose
from .models_registry import DEFAULT, load, transform_for
from .world import EVAL_SEED, World

#: Images the words and scores are read from (scores correlate over images).
WORD_IMAGES = 200


def demo_images(model: torch.nn.Module, n: int) -> tuple[torch.Tensor, list[str]]:
    """The first ``n`` images of the world's evaluation split, prepared for ``model``, and their captions."""
    world = World(n, EVAL_SEED)
    raw = [world.raw(i) for i in range(n)]
    images = torch.stack([torch.from_numpy(img).permute(2, 0, 1) for _, img, _, _ in raw])
    return transform_for(model)(images), [text for *_, text in raw]


def run(model_name: str = DEFAULT, granularity: str = "head", batch: int = 4, top: int = 12,
        float64: bool = False, checkpoint: str | None = None, pretrained: bool = False,
        report: str | Path | None = None) -> float:
    """Print the components, their reconstruction error and (for world-vit) their words; returns the error."""
    model = load(model_name, checkpoint=checkpoint, pretrained=pretrained)
    dtype = torch.float64 if float64 else torch.float32
    model = model.to(dtype)
    print(f"model: {model_name} ({type(model).__name__}, {sum(p.numel() for p in model.parameters()):,} parameters)")
    t0 = time.perf_counter()
    dm = decompose(model, granularity)
    print(f"compiled in {time.perf_counter() - t0:.1f} s: {dm.summary()}")
    x, captions = demo_images(model, batch)
    x = x.to(dtype)
    print(f"images: the first {batch} of the synthetic world's evaluation split, e.g. " +
          "; ".join(f"'{c}'" for c in captions[:3]))
    with torch.inference_mode():
        out = dm(x)
        ref = model(x)
    err = float(((out.total() - ref).flatten(1).double().norm(dim=1) / ref.flatten(1).double().norm(dim=1)).max())
    print(f"\n{top} largest components (mean norm over the {batch} images):")
    print(out.table(k=top))
    print(f"\nreconstruction: sum of {len(dm.components)} components vs model output, "
          f"max relative error {err:.2e} ({str(dtype).removeprefix('torch.')})")
    if model_name == DEFAULT and granularity == "head" and checkpoint is None:
        words(model, top=min(top, 8))
    if report is not None:
        write_demo_report(model_name, report)
    return err


def words(model: torch.nn.Module, top: int = 8) -> None:
    """The largest components of world-vit's representation in words (shipped per-component maps) and
    the property each scores highest on (shipped shared map), in the world CLIP."""
    from .align import ClipSpace, collect, describe, representation
    from .report.vocabulary import scored_vocabulary, world_properties
    from .world.aligners import load_aligner

    rep = representation(model.float())
    dm = decompose(rep, "head")
    clip = ClipSpace.world()
    feats = collect(dm, World(WORD_IMAGES, EVAL_SEED).arrays()["images"], preprocess=transform_for(rep),
                    progress=False)
    aligned = load_aligner("world-vit").map(feats)  # descriptions
    ranking = load_aligner("world-vit", variant="shared").map(feats)  # scores
    vocab, text, scores = scored_vocabulary(ranking, world_properties(), clip)
    norms = feats.contributions.norm(dim=2).mean(0)
    order = [int(i) for i in torch.argsort(norms, descending=True)[:top]]
    print(f"\nin words (representation components mapped into the world CLIP on {WORD_IMAGES} images; "
          "descriptions through the shipped per-component maps, scores through the shipped shared map):")
    width = max(len(feats.names[i]) for i in order)
    for i in order:
        name = feats.names[i]
        said = ", ".join(w for w, _ in describe(aligned, name, vocab, 3, text_embeddings=text))
        best = max(scores, key=lambda p: scores[p][name])
        print(f"  {name:<{width}}  says: {said:<28}  scores highest on {best} ({scores[best][name]:.2f})")


def write_demo_report(model_name: str, folder: str | Path) -> None:
    """A run of world images with the shipped aligners installed, and its report, in ``folder``."""
    from .data import open_data
    from .report import write_report
    from .store import decompose_to_store, open_run
    from .store.files import ALIGNER_RECORD, SHARED_RECORD, publish, sha256, tmp_path, write_json
    from .store.lock import RunLock
    from .world.aligners import VARIANTS, aligner_path

    folder = Path(folder)
    run_dir = folder / "run"
    decompose_to_store(load(model_name), open_data(f"world:{WORD_IMAGES}"), run_dir, model_name=model_name,
                       batch=50, workers=0, progress=False)
    r = open_run(run_dir)
    for variant, path, record in (("per_component", r.aligner_path(), ALIGNER_RECORD),
                                  ("shared", r.shared_aligner_path(), SHARED_RECORD)):
        if path.is_file():
            continue
        with RunLock(run_dir, what="demo"):
            tmp = tmp_path(path)
            tmp.write_bytes(aligner_path("world-vit", variant).read_bytes())
            publish(tmp, path)
            write_json(run_dir / record, {"clip": "world-clip", "checkpoint": None, "shipped": True,
                                          "variant": variant, "lam": VARIANTS[variant][1],
                                          "bytes": path.stat().st_size, "sha256": sha256(path)})
    page = write_report(r, folder, top=8)
    print(f"\nreport: {page}")
