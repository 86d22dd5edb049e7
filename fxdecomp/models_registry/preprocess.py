"""Where a model's input size and eval preprocessing are read: ``fxdecomp.preprocessing.for_model``
(below the compiler, which needs the input size too); re-exported here, where they were first."""
from ..preprocessing.for_model import IMAGENET_MEAN, IMAGENET_STD, input_size_of, normalization_of, transform_for

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "input_size_of", "normalization_of", "transform_for"]
