"""Captions built from attributes, the words for each attribute value, and a
word-level tokenizer for the small CLIP's text tower."""
from __future__ import annotations

import re

import numpy as np
import torch

from .attributes import CATEGORICAL, Attributes

#: How each attribute value is said in words (the first phrasing is the canonical one).
WORDS = {
    "shape": {s: [s] for s in CATEGORICAL["shape"]},
    "colour": {c: [c] for c in CATEGORICAL["colour"]},
    "pattern": {"solid": ["plain", "solid"], "striped": ["striped"], "dotted": ["dotted", "polka dot"],
                "checkered": ["checkered"]},
    "location": {"sea": ["sea", "ocean"], "lake": ["lake"], "marsh": ["marsh", "swamp"],
                 "forest": ["forest", "woods"], "desert": ["desert"], "city": ["city"]},
    "size": {"small": ["small", "tiny"], "medium": ["medium"], "large": ["large", "big"]},
}

TEMPLATES = (
    "a {size} {colour} {pattern} {shape} in the {location}",
    "a {colour} {shape} with a {pattern} pattern in the {location}",
    "a photo of a {pattern} {colour} {shape} in the {location}",
    "a {size} {shape} that is {colour} and {pattern}, {location} in the background",
    "the {location} behind a {colour} {pattern} {shape}",
    "a {colour} {shape} on the {horizontal} in the {location}",
)

#: Prompts for zero-shot reading of one attribute (the value's words fill {}).
ATTRIBUTE_PROMPTS = {
    "shape": "a photo of a {}",
    "colour": "a photo of a {} object",
    "pattern": "a photo of a {} object",
    "location": "a photo of the {}",
    "size": "a photo of a {} object",
}


#: world-clip-l's caption templates. Each names all five attributes, so that two images that differ
#: in one attribute never share a caption (size is missing from four of ``TEMPLATES``), and most
#: open with a zero-shot prompt's own words ("a photo of a {} object", "a photo of the {}"), so
#: that the phrasings the model is read with are phrasings it was trained on.
FULL_TEMPLATES = (
    "a photo of a {size} {colour} {pattern} {shape} in the {location}",
    "a photo of a {colour} object, a {size} {pattern} {shape} in the {location}",
    "a photo of a {size} object, a {colour} {shape} with a {pattern} pattern in the {location}",
    "a photo of a {pattern} object, a {size} {colour} {shape} in the {location}",
    "a photo of the {location} with a {size} {colour} {pattern} {shape}",
    "a {size} {shape} that is {colour} and {pattern}, {location} in the background",
)


def caption(attrs: Attributes, rng: np.random.Generator) -> str:
    """One caption of an image, phrased at random from its attributes."""
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    fill = {k: _say(k, getattr(attrs, k), rng) for k in CATEGORICAL}
    fill["horizontal"] = attrs.horizontal
    return template.format(**fill)


def _say(attr: str, value: str, rng) -> str:
    options = WORDS[attr][value]
    return options[int(rng.integers(len(options)))]


def group_captions(members: list[Attributes], rng: np.random.Generator) -> list[str]:
    """Captions of a group of images that differ from each other in few attributes: one
    template and one choice of synonyms for the whole group, so the captions differ exactly
    in the words of the attributes that differ (text-side hard negatives)."""
    template = FULL_TEMPLATES[int(rng.integers(len(FULL_TEMPLATES)))]
    pick = {k: float(rng.random()) for k in CATEGORICAL}
    return [template.format(**{k: _pick(k, getattr(a, k), pick[k]) for k in CATEGORICAL}) for a in members]


def _pick(attr: str, value: str, u: float) -> str:
    options = WORDS[attr][value]
    return options[int(u * len(options))]


def prompts(attr: str) -> list[str]:
    """One zero-shot prompt per value of ``attr``, in ``CATEGORICAL`` order."""
    return [ATTRIBUTE_PROMPTS[attr].format(WORDS[attr][v][0]) for v in CATEGORICAL[attr]]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def vocabulary() -> list[str]:
    words = set()
    for t in TEMPLATES + tuple(ATTRIBUTE_PROMPTS.values()):
        words.update(_words(t.replace("{", " ").replace("}", " ")))
    for per_attr in WORDS.values():
        for options in per_attr.values():
            for o in options:
                words.update(_words(o))
    words.update(["left", "right", "middle", "object", "image", "picture", "of"])
    return sorted(words)


class WordTokenizer:
    """Maps text to [context_length] token ids: padding 0, unknown 1, words, then
    start and end of text (end has the largest id, which is where open_clip's
    text tower reads the sentence embedding)."""

    def __init__(self, words: list[str] | None = None, context_length: int = 20):
        self.words = list(words or vocabulary())
        self.context_length = context_length
        self.index = {w: i + 2 for i, w in enumerate(self.words)}
        self.sot = len(self.words) + 2
        self.eot = len(self.words) + 3
        self.vocab_size = len(self.words) + 4

    def encode(self, text: str) -> list[int]:
        ids = [self.index.get(w, 1) for w in _words(text)][: self.context_length - 2]
        return [self.sot] + ids + [self.eot]

    def __call__(self, texts: str | list[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for i, t in enumerate(texts):
            ids = self.encode(t)
            out[i, : len(ids)] = torch.tensor(ids)
        return out
