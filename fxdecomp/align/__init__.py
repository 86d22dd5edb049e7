"""Components in CLIP space: CompAlign, text descriptions and property scores.

``collect`` decomposes images and embeds them with CLIP in one pass;
``CompAlign`` maps every component into CLIP space; ``describe``/``textspan``
put a component into words; ``property_scores`` ranks components by a
property and ``clip_scores`` is the baseline it is checked against. See docs/ALIGN.md.
"""
from .aligned import Aligned
from .clip_space import ClipSpace, open_clip_templates, world_templates
from .compalign import INITS, VARIANTS, CompAlign, train_aligner
from .describe import describe, textspan
from .features import Features, Stream, collect
from .probes import auc, fit_probe, probe_accuracy, readout_effects, value_aucs
from .representation import representation
from .scores import SCORE_METHODS, clip_scores, correlation, property_scores, rankdata, spearman, text_basis

__all__ = [
    "INITS", "SCORE_METHODS", "VARIANTS", "Aligned", "ClipSpace", "CompAlign", "Features", "Stream", "auc", "clip_scores", "collect",
    "correlation", "describe", "fit_probe", "open_clip_templates", "probe_accuracy", "property_scores", "rankdata",
    "readout_effects", "representation", "spearman", "text_basis", "textspan", "train_aligner", "value_aucs", "world_templates",
]
