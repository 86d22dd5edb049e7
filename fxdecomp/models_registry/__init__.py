"""Named model presets, loading (library names, local checkpoints) and preprocessing."""
from .perturb import perturb_
from .preprocess import input_size_of, normalization_of, transform_for
from .registry import DEFAULT, Preset, load, presets, register_preset

__all__ = ["perturb_", "load", "presets", "register_preset", "Preset", "DEFAULT", "input_size_of", "normalization_of",
           "transform_for"]
