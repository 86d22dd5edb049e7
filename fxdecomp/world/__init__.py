"""A synthetic image world with known attributes, and small models trained on it.

Images show one shape (colour, fill pattern, size, position) in front of a
location; captions are written from the attributes; a Waterbirds-style split
ties the shape family to the background. See docs/WORLD.md.
"""
from .attributes import BACKGROUNDS, CATEGORICAL, COLOURS, FAMILIES, LOCATIONS, PATTERNS, SHAPES, Attributes
from .captions import WordTokenizer, caption, prompts
from .dataset import EVAL_SEED, GROUPS, World
from .render import render
from .shipped import CLIP_NAMES, NAMES, load, load_clip, load_probe, record

__all__ = ["World", "Attributes", "render", "caption", "prompts", "WordTokenizer", "load", "load_clip",
           "load_probe", "record", "NAMES", "CLIP_NAMES", "CATEGORICAL", "SHAPES", "COLOURS", "PATTERNS",
           "LOCATIONS", "FAMILIES", "BACKGROUNDS", "GROUPS", "EVAL_SEED"]
