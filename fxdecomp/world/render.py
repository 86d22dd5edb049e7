"""Draw an image (and its object mask) from its attributes, deterministically.

Backgrounds are procedural textures per location; the object is an exact
(not anti-aliased) polygon, so its mask is the set of pixels it covers and its
pixels carry exactly its colour, or its colour and a darker shade of it for
the striped, dotted and checkered patterns.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from .attributes import COLOURS, Attributes

#: For patterned objects: the second colour is this fraction of the first.
SHADE = 0.45


def shade(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    if max(rgb) < 40:  # black: a shade of it would look the same
        return (110, 110, 110)
    return tuple(int(c * SHADE) for c in rgb)  # type: ignore[return-value]


def render(attrs: Attributes, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Return (image [size, size, 3] uint8, mask [size, size] bool)."""
    rng = np.random.default_rng(attrs.seed)
    img = _background(attrs.location, size, rng)
    mask = object_mask(attrs, size)
    fill = _fill(attrs, size, rng)
    img[mask] = fill[mask]
    return img, mask


def object_mask(attrs: Attributes, size: int = 64) -> np.ndarray:
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy, r = attrs.cx * size, attrs.cy * size, attrs.radius
    if attrs.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        draw.polygon(_polygon(attrs.shape, cx, cy, r, attrs.angle), fill=255)
    return np.asarray(canvas) > 0


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        pts = [(math.cos(math.radians(45 + 90 * k)), math.sin(math.radians(45 + 90 * k))) for k in range(4)]
    elif shape == "triangle":
        pts = [(math.cos(math.radians(-90 + 120 * k)), math.sin(math.radians(-90 + 120 * k))) for k in range(3)]
    elif shape == "hexagon":
        pts = [(math.cos(math.radians(60 * k)), math.sin(math.radians(60 * k))) for k in range(6)]
    elif shape == "star":
        pts = []
        for k in range(10):
            rad = 1.0 if k % 2 == 0 else 0.42
            a = math.radians(-90 + 36 * k)
            pts.append((rad * math.cos(a), rad * math.sin(a)))
    elif shape == "cross":
        w = 0.36
        base = [(w, 1), (w, w), (1, w), (1, -w), (w, -w), (w, -1), (-w, -1), (-w, -w), (-1, -w), (-1, w),
                (-w, w), (-w, 1)]
        pts = [(x, y) for x, y in base]
    else:
        raise ValueError(f"unknown shape {shape!r}")
    t = math.radians(angle)
    c, s = math.cos(t), math.sin(t)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]


def _fill(attrs: Attributes, size: int, rng: np.random.Generator) -> np.ndarray:
    main = np.array(COLOURS[attrs.colour], dtype=np.uint8)
    second = np.array(shade(COLOURS[attrs.colour]), dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    t = math.radians(attrs.angle)
    u = (xx - attrs.cx * size) * math.cos(t) + (yy - attrs.cy * size) * math.sin(t)
    v = -(xx - attrs.cx * size) * math.sin(t) + (yy - attrs.cy * size) * math.cos(t)
    if attrs.pattern == "solid":
        use_main = np.ones((size, size), bool)
    elif attrs.pattern == "striped":
        use_main = np.mod(np.floor(u), 5) < 3
    elif attrs.pattern == "checkered":
        use_main = (np.floor(u / 4) + np.floor(v / 4)) % 2 == 0
    elif attrs.pattern == "dotted":
        gu, gv = np.mod(u, 6) - 3, np.mod(v, 6) - 3
        use_main = gu * gu + gv * gv > 2.2
    else:
        raise ValueError(f"unknown pattern {attrs.pattern!r}")
    out = np.empty((size, size, 3), np.uint8)
    out[use_main] = main
    out[~use_main] = second
    return out


def _noise(rng, size, amount):
    return rng.normal(0, amount, (size, size, 1)).astype(np.float32)


def _background(location: str, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.zeros((size, size, 3), np.float32)
    if location == "sea":
        img[:] = np.array([20, 70, 150]) * (1 - 0.35 * yy[..., None]) + np.array([0, 0, 20])
        phase, freq = rng.uniform(0, 6.28), rng.uniform(10, 16)
        waves = np.sin(xx * freq + phase + yy * 40) > 0.93
        img[waves] = [150, 190, 235]
    elif location == "lake":
        img[:] = [70, 150, 200]
        shore = int(size * rng.uniform(0.08, 0.18))
        img[:shore] = [40, 120, 55]
        ripples = np.sin((xx + rng.uniform(0, 1)) * 25) * np.sin(yy * 31) > 0.8
        img[ripples & (yy * size >= shore)] = [110, 180, 220]
    elif location == "marsh":
        img[:] = [60, 100, 90]
        for _ in range(int(size * 0.4)):
            x0 = int(rng.integers(0, size))
            top = int(rng.integers(0, size // 2))
            img[top:, x0:x0 + 1] = [35, 75, 35]
    elif location == "forest":
        img[:] = [25, 70, 30]
        for _ in range(int(size * 0.35)):
            x0, y0 = rng.uniform(0, 1, 2)
            rad = rng.uniform(0.06, 0.14)
            crown = (xx - x0) ** 2 + (yy - y0) ** 2 < rad ** 2
            img[crown] = [rng.integers(25, 60), rng.integers(95, 145), rng.integers(25, 60)]
    elif location == "desert":
        img[:] = [225, 190, 120]
        for _ in range(3):
            a, ph, h = rng.uniform(0.04, 0.1), rng.uniform(0, 6.28), rng.uniform(0.2, 0.9)
            dune = np.abs(yy - (h + a * np.sin(xx * 8 + ph))) < 0.015
            img[dune] = [195, 155, 90]
    elif location == "city":
        img[:] = [150, 160, 175]
        x = 0
        while x < size:
            w = int(rng.integers(size // 10, size // 5))
            top = int(rng.integers(size // 8, size // 2))
            grey = rng.integers(70, 115)
            img[top:, x:x + w] = [grey, grey, grey + 5]
            for wy in range(top + 2, size - 2, 5):
                for wx in range(x + 1, min(x + w - 1, size - 1), 4):
                    if rng.random() < 0.5:
                        img[wy:wy + 2, wx:wx + 2] = [230, 210, 120]
            x += w + int(rng.integers(0, 3))
    else:
        raise ValueError(f"unknown location {location!r}")
    img = img + _noise(rng, size, 6.0)
    return np.clip(img, 0, 255).astype(np.uint8)


def to_pil(img: np.ndarray, scale: int = 1) -> Image.Image:
    pil = Image.fromarray(img)
    return pil.resize((img.shape[1] * scale, img.shape[0] * scale), Image.NEAREST) if scale > 1 else pil
