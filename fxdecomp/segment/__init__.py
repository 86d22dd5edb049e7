"""Zero-shot segmentation from a token-granularity decomposition, the baselines it is measured
against, and the standard metrics.

``position_maps(out)`` splits the representation by image position (every token's direct
contribution, summed per position over heads and layers); ``rollout``, ``chefer`` and
``gradcam`` are the attention-based baselines, run on the model itself with the
decomposition's component table placing their attention maps (windows and merged stages
included); ``segmentation_scores`` is pixel accuracy, mIoU and mAP.
"""
from .attention import AttentionRecorder, explicit_mha, explicit_sdpa
from .baselines import BASELINES, READOUTS, baseline, baselines, chefer, gradcam, readout_of, rollout
from .evaluate import METHODS, evaluate_segmentation, method_maps
from .figure import segmentation_figure
from .geometry import Stage, attention_stages, dense, merge_matrix
from .maps import REDUCTIONS, position_decomposition, position_maps
from .metrics import average_precision, normalise, segmentation_scores

__all__ = ["AttentionRecorder", "BASELINES", "METHODS", "READOUTS", "REDUCTIONS", "Stage", "attention_stages",
           "average_precision", "baseline", "baselines", "chefer", "dense", "evaluate_segmentation", "explicit_mha",
           "explicit_sdpa", "gradcam", "merge_matrix", "method_maps", "normalise", "position_decomposition", "position_maps", "readout_of",
           "rollout", "segmentation_figure", "segmentation_scores"]
