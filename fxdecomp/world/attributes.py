"""The vocabulary of the synthetic world: every attribute an image has, and its values.

An image shows one object (a shape with a colour, a fill pattern, a size and a
position) in front of a background "location". Locations come in two
families, water-like and land-like, which is what the Waterbirds-style split
correlates with the object's shape family.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "cross")
SHAPE_FAMILY = {"circle": "round", "square": "round", "hexagon": "round",
                "triangle": "pointed", "star": "pointed", "cross": "pointed"}
FAMILIES = ("round", "pointed")

COLOURS = {
    "red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 80, 230), "yellow": (240, 220, 40),
    "purple": (150, 50, 190), "orange": (245, 140, 20), "white": (245, 245, 245), "black": (15, 15, 15),
}
PATTERNS = ("solid", "striped", "dotted", "checkered")
LOCATIONS = ("sea", "lake", "marsh", "forest", "desert", "city")
LOCATION_FAMILY = {"sea": "water", "lake": "water", "marsh": "water",
                   "forest": "land", "desert": "land", "city": "land"}
BACKGROUNDS = ("water", "land")
SIZES = {"small": (9, 12), "medium": (13, 16), "large": (17, 21)}  # object radius in pixels at 64x64

#: Attributes with a finite set of values, in the order classifier heads use them.
CATEGORICAL = {
    "shape": SHAPES,
    "colour": tuple(COLOURS),
    "pattern": PATTERNS,
    "location": LOCATIONS,
    "size": tuple(SIZES),
}


@dataclass(frozen=True)
class Attributes:
    shape: str
    colour: str
    pattern: str
    location: str
    size: str
    radius: int
    cx: float  # object centre, as a fraction of the image width / height
    cy: float
    angle: float  # rotation in degrees
    seed: int  # drives the background's and pattern's randomness

    @property
    def family(self) -> str:
        return SHAPE_FAMILY[self.shape]

    @property
    def background(self) -> str:
        return LOCATION_FAMILY[self.location]

    @property
    def horizontal(self) -> str:
        return "left" if self.cx < 0.4 else "right" if self.cx > 0.6 else "middle"

    def labels(self) -> dict[str, int]:
        """Index of each categorical attribute's value."""
        return {k: CATEGORICAL[k].index(getattr(self, k)) for k in CATEGORICAL}

    def to_dict(self) -> dict:
        return asdict(self)


def sample(rng: np.random.Generator, *, shape: str | None = None, location: str | None = None,
           image_size: int = 64) -> Attributes:
    """Draw attributes; ``shape``/``location`` may be fixed (the spurious split does)."""
    size = str(rng.choice(tuple(SIZES)))
    lo, hi = SIZES[size]
    scale = image_size / 64
    radius = int(round(rng.integers(lo, hi + 1) * scale))
    margin = radius / image_size + 0.02
    return Attributes(
        shape=shape or str(rng.choice(SHAPES)),
        colour=str(rng.choice(tuple(COLOURS))),
        pattern=str(rng.choice(PATTERNS)),
        location=location or str(rng.choice(LOCATIONS)),
        size=size,
        radius=radius,
        cx=float(rng.uniform(margin, 1 - margin)),
        cy=float(rng.uniform(margin, 1 - margin)),
        angle=float(rng.uniform(0, 360)),
        seed=int(rng.integers(0, 2**31 - 1)),
    )
