"""Components in CLIP space: CompAlign, text descriptions and property scores.

``collect`` decomposes images and embeds them with CLIP in one pass (``materialise`` of
``ImageBatches``; ``RunBatches`` reads a run store through the same ``Batches`` interface);
``CompAlign`` maps every component into CLIP space; ``describe``/``textspan``
put a component into words; ``property_scores`` ranks components by a
property and ``clip_scores`` is the baseline it is checked against. Over a run store:
``align_run`` trains its aligners, ``run_aligner``/``run_shared_aligner``/``run_clip_space`` read
them back, ``run_batches`` feeds CompAlign shard by shard and ``property_scores_over`` ranks
through the shared map. See docs/ALIGN.md.
"""
from .aligned import Aligned
from .batches import Batches, ImageBatches, RunBatches, RunStream, Stream
from .clip_space import ClipSpace, open_clip_templates, world_templates
from .compalign import INITS, VARIANTS, CompAlign, train_aligner
from .describe import describe, textspan
from .features import Features, collect, materialise
from .over_run import property_scores_over, shared_aligned
from .probes import auc, fit_probe, probe_accuracy, readout_effects, value_aucs
from .representation import representation
from .runs import run_aligner, run_batches, run_clip_space, run_features, run_shared_aligner
from .scores import SCORE_METHODS, clip_scores, correlation, property_scores, rankdata, spearman, text_basis
from .train_run import Aligners, align_run, embed_images

__all__ = [
    "INITS", "SCORE_METHODS", "VARIANTS", "Aligned", "Aligners", "Batches", "ClipSpace", "CompAlign", "Features",
    "ImageBatches", "RunBatches", "RunStream", "Stream", "align_run", "auc", "clip_scores", "collect", "correlation",
    "describe", "embed_images", "fit_probe", "materialise", "open_clip_templates", "probe_accuracy", "property_scores",
    "property_scores_over", "rankdata", "readout_effects", "representation", "run_aligner", "run_batches", "run_clip_space", "run_features", "run_shared_aligner",
    "shared_aligned", "spearman", "text_basis", "textspan", "train_aligner", "value_aucs", "world_templates",
]
