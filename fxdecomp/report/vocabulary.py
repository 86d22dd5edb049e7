"""Words to describe components with: the world's own attribute words for world runs, the paper's
property lists otherwise, or a user's own."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import InputError

#: The paper's property lists (descriptions as they are put through CLIP's templates).
PAPER_PROPERTIES = {
    "colour": ["blue colour", "green colour", "red colour", "yellow colour", "black colour", "white colour"],
    "texture": ["rough texture", "smooth texture", "furry texture", "sleek texture", "slimy texture",
                "spiky texture", "glossy texture"],
    "pattern": ["spotted pattern", "striped pattern", "polka dot pattern", "plain pattern", "checkered pattern"],
    "shape": ["triangular shape", "rectangular shape", "circular shape", "octagon"],
    "location": ["sea", "beach", "forest", "desert", "city", "sky", "marsh"],
    "animal": ["dog", "cat", "bird", "fish", "horse", "insect"],
    "person": ["man", "woman", "child", "face", "hand"],
}


def world_properties() -> dict[str, list[str]]:
    from ..world.attributes import CATEGORICAL
    from ..world.captions import WORDS

    return {attr: [WORDS[attr][v][0] for v in values] for attr, values in CATEGORICAL.items()}


def properties_for(run, path: str | Path | None = None) -> dict[str, list[str]]:
    """{property: descriptions}: from a JSON file when given, else the world's words for world runs,
    else the paper's lists."""
    if path is not None:
        path = Path(path)
        try:
            props = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise InputError(f"cannot read properties from {path} ({err}); it must be JSON like "
                             '{"colour": ["red", "green"], "place": ["sea", "city"]}') from None
        if not isinstance(props, dict) or not all(isinstance(v, list) and v and all(isinstance(w, str) for w in v)
                                                  for v in props.values()):
            raise InputError(f"{path} must map each property to a non-empty list of descriptions")
        return props
    return world_properties() if run.manifest["source"]["kind"] == "world" else dict(PAPER_PROPERTIES)


def scored_vocabulary(aligned, props: dict[str, list[str]], clip):
    """(vocabulary, its text embeddings, {property: {component: variance share}}), the words put
    through CLIP once: the descriptions and the property scores read the same embeddings.
    ``aligned``: the components through the shared map, the one rankings read (docs/ALIGN.md)."""
    from ..align.scores import property_scores

    vocab = list(dict.fromkeys(w for words in props.values() for w in words))
    text = clip.encode_texts(vocab)
    row = {w: i for i, w in enumerate(vocab)}
    scores = {p: property_scores(aligned, words, text_embeddings=text[[row[w] for w in words]], method="share")
              for p, words in props.items()}
    return vocab, text, scores
