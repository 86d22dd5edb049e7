"""Named model presets, loading (library names, local checkpoints) and preprocessing."""
from .preprocess import input_size_of, normalization_of, transform_for

__all__ = ["input_size_of", "normalization_of", "transform_for"]
