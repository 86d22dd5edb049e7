"""``write_report(run, out)``: one self-contained HTML page that explains a run.

The model, its reconstruction error and its largest components; for each, its top
descriptions and the property it scores highest on (once ``fxdecomp align`` has run),
the images it says most about and, at token granularity, where in them it reads;
bar charts of every property's scores. Descriptions read the per-component maps; every
ranking (the property a component scores highest on, the bars) reads the shared map, the
only one whose rankings hold against the ground truth (docs/ALIGN.md). The page says so.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import torch

from ..align.aligned import Aligned
from ..align.describe import describe
from ..align.runs import run_aligner, run_clip_space, run_shared_aligner
from ..components import ComponentTable
from ..errors import InputError
from ..heatmaps.heatmap import token_maps
from ..store.files import publish, tmp_path
from ..store.run import Run, open_run
from . import figures
from .vocabulary import properties_for, scored_vocabulary


def _template():
    import jinja2

    text = (resources.files("fxdecomp.report") / "templates" / "report.html.j2").read_text()
    env = jinja2.Environment(autoescape=jinja2.select_autoescape(default=True), undefined=jinja2.StrictUndefined)
    return env.from_string(text)


def aligned_space(run: Run, checkpoint=None):
    """(the run's aligner, its CLIP space), or (None, None) before ``fxdecomp align``."""
    if not run.aligner_path().is_file():
        return None, None
    return run_aligner(run), run_clip_space(run, checkpoint)


class _Pictures:
    """Images of the run as [H, W, 3] arrays, by index or index array, each decoded once."""

    def __init__(self, data):
        self.data, self.cache = data, {}

    def one(self, i: int) -> np.ndarray:
        if i not in self.cache:
            self.cache[i] = self.data[i]["image"].permute(1, 2, 0).numpy()
        return self.cache[i]

    def __getitem__(self, idx) -> np.ndarray:
        return np.stack([self.one(int(i)) for i in np.atleast_1d(idx)])

    @property
    def size(self) -> tuple[int, int]:
        return self.one(0).shape[:2]


def write_report(run, out, *, top: int = 12, images: int = 400, per_component: int = 8, properties=None,
                 clip_checkpoint=None) -> Path:
    """Write ``out/index.html`` for ``run`` (a path or a ``Run``); returns the page's path."""
    run = run if isinstance(run, Run) else open_run(run)
    run.require_full("the report (fxdecomp explain)")
    if top < 1 or images < 2:
        raise InputError("the report needs --top >= 1 and --images >= 2")
    n = min(run.n, images)
    idx = np.arange(n)
    dec = run.decomposition(idx)  # the stored outputs: dec.error() is the run's own for these images
    data = run.data()
    pictures = _Pictures(data)  # decoded on first use: the page shows a few dozen of the images read
    token = run.granularity == "token"
    aligner, clip = aligned_space(run, clip_checkpoint)
    shared = run_shared_aligner(run) if aligner is not None else None  # refuses a run aligned without one
    mapped = dec.map(aligner) if aligner is not None else None  # descriptions: each token by its head's map
    ranked = dec.map(shared) if shared is not None else None  # scores and rankings: the shared map
    summary = dec.group("head") if token else dec  # summaries per head: tokens (mapped or not) summed
    if token and mapped is not None:
        mapped, ranked = mapped.group("head"), ranked.group("head")
    comps: ComponentTable = summary.components
    norms = summary.norms().mean(0)
    order = [int(i) for i in torch.argsort(norms, descending=True)[:top]]
    props = properties_for(run, properties)
    aligned = Aligned.of(mapped) if mapped is not None else None  # descriptions
    ranking = Aligned.of(ranked) if ranked is not None else None  # scores and rankings
    vocab, text, scores = scored_vocabulary(ranking, props, clip) if ranking is not None else ([], None, {})

    sections = []
    for j in order:
        c = comps[j]
        x = summary.contributions[:, j].double()
        best = torch.topk((x - x.mean(0)).norm(dim=1), min(per_component, n)).indices.numpy()
        entry = {"name": c.name, "kind": c.kind, "layer": "" if c.layer is None else c.layer,
                 "norm": f"{float(norms[j]):.4g}", "images": figures.image_strip(pictures[best]),
                 "descriptions": [], "property": None, "heatmaps": None}
        if aligned is not None:
            entry["descriptions"] = [(w, f"{s:.3g}") for w, s in describe(aligned, c.name, vocab, 5,
                                                                           text_embeddings=text)]
            best_prop = max(scores, key=lambda p: scores[p][c.name])
            entry["property"] = (best_prop, f"{scores[best_prop][c.name]:.3f}")
        if token and c.kind == "attn" and c.head is not None:
            sel = best[:4]
            arrays = token_maps(dec.take(sel), pictures.size, component=c.name).numpy()
            entry["heatmaps"] = figures.heatmap_strip(pictures[sel] / 255.0, arrays, [f"image {i}" for i in sel])
        sections.append(entry)

    charts = [{"property": p, "words": ", ".join(props[p]),
               "chart": figures.bars([comps.names[i] for i in np.argsort([-s[n_] for n_ in comps.names])[:10]],
                                     sorted((s[n_] for n_ in comps.names), reverse=True)[:10],
                                     f"{p}: components by variance share (shared map)",
                                     "share of the variance along the property")}
              for p, s in scores.items()]
    rec = run.manifest["reconstruction"]
    page = _template().render(
        title=f"{run.model_name}: components explained",
        model=run.model_name, granularity=run.granularity, n_components=len(run.components), n_images=run.n,
        shown=n, d_model=run.d_model, dtype=run.manifest["dtype"], source=run.manifest["source"],
        error=f"{rec['max_relative_error']:.2e}",
        error32=None if rec.get("max_relative_error_vs_float32") is None else f"{rec['max_relative_error_vs_float32']:.2e}",
        clip=clip.name if clip is not None else None, versions=run.manifest["versions"],
        largest=figures.bars([comps.names[i] for i in order], [float(norms[i]) for i in order],
                             "largest components (mean norm of the contribution)", "mean norm"),
        sections=sections, charts=charts, grouped=token)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "index.html"
    tmp = tmp_path(path)
    tmp.write_text(page)
    publish(tmp, path)
    return path
