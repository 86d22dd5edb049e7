"""fxdecomp.retrieval: choosing components, image and text queries, precision@k, on planted data."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fxdecomp import InputError, UnknownComponentError
from fxdecomp.align import Aligned, property_scores
from fxdecomp.retrieval import (
    by_text,
    component_sum,
    description_components,
    image_grid,
    nearest,
    precision_at_k,
    property_components,
    text_direction_against,
    top_images,
)

COLOURS = ["red", "green", "blue"]
PLACES = ["sea", "city"]


def planted(n=300, seed=0):
    """6 text directions (3 colours, 2 places, 1 unused); comp0 writes the colour, comp1 the place,
    comp2 a strong direction no description has, comp3 a little of everything."""
    g = torch.Generator().manual_seed(seed)
    texts = torch.eye(8, dtype=torch.float64)[:6]
    colour = torch.randint(0, 3, (n,), generator=g)
    place = torch.randint(0, 2, (n,), generator=g)
    mapped = torch.zeros(n, 4, 8, dtype=torch.float64)
    mapped[:, 0] = texts[colour] * 2.0
    mapped[:, 1] = texts[3 + place] * 2.0
    mapped[:, 2] = torch.randn(n, 1, generator=g, dtype=torch.float64) * 5.0 * texts[5] + \
        torch.randn(n, 8, generator=g, dtype=torch.float64) * 0.8
    mapped[:, 3] = torch.randn(n, 8, generator=g, dtype=torch.float64) * 0.2
    return Aligned(mapped, ["comp0", "comp1", "comp2", "comp3"]), texts, colour.numpy(), place.numpy()


def test_property_components_follow_the_papers_rule():
    aligned, texts, _, _ = planted()
    scores = {"colour": property_scores(aligned, COLOURS, text_embeddings=texts[:3], method="share"),
              "place": property_scores(aligned, PLACES, text_embeddings=texts[3:5], method="share")}
    assert property_components(scores, "colour", 1) == ["comp0"]
    assert property_components(scores, "place", 1) == ["comp1"]
    # a component that scores for both properties is pushed down by its other score
    both = {"colour": {"a": 0.9, "b": 0.6}, "place": {"a": 0.8, "b": 0.0}}
    assert property_components(both, "colour", 2) == ["b", "a"]
    with pytest.raises(InputError, match="property"):
        property_components(scores, "shape", 1)


def test_image_queries_find_the_same_value_in_the_property_subspace():
    aligned, texts, colour, place = planted()
    queries = np.arange(50)
    sub = nearest(component_sum(aligned, ["comp0"]), queries, 10)
    whole = nearest(aligned.total(), queries, 10)
    assert precision_at_k(sub, colour[queries], colour) == 1.0
    assert precision_at_k(whole, colour[queries], colour) < 0.8
    assert not (sub == torch.as_tensor(queries).unsqueeze(1)).any()  # a query never finds itself
    with pytest.raises(InputError, match="at least one component"):
        component_sum(aligned, [])
    with pytest.raises(UnknownComponentError):
        component_sum(aligned, ["comp9"])


def test_nearest_and_precision_on_a_hand_made_gallery():
    x = torch.tensor([[1.0, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]])
    got = nearest(x, [0, 2], k=1)
    # centred on the gallery mean, 0's nearest is 1 and 2's is 3
    assert got.tolist() == [[1], [3]]
    assert precision_at_k(got, [0, 1], [0, 0, 1, 1]) == 1.0
    assert precision_at_k(torch.tensor([[2], [0]]), [0, 1], [0, 0, 1, 1]) == 0.0
    with pytest.raises(InputError, match="cannot give"):
        nearest(x, [0], k=4)


def test_text_queries_read_the_components_chosen_for_the_description():
    aligned, texts, colour, place = planted()
    for v in range(3):
        d = text_direction_against(texts[:3], v)
        chosen = description_components(aligned, d, 1)
        assert chosen == ["comp0"]
        top = by_text(component_sum(aligned, chosen), d, 10)
        assert (colour[top.numpy()] == v).all()
    d = text_direction_against(texts[3:5], 1)
    assert description_components(aligned, d, 1) == ["comp1"]
    # centring against the other descriptions: red minus the colours' mean
    torch.testing.assert_close(text_direction_against(texts[:3], 0),
                               F.normalize(texts[0] - texts[:3].mean(0), dim=0))
    assert top_images(aligned, "comp2", 3).shape == (3,)
    with pytest.raises(InputError, match="k must"):
        description_components(aligned, d, 0)


def test_image_grid_draws_rows_with_queries(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 255, (6, 8, 8, 3), dtype=np.uint8)
    fig = image_grid(imgs, [("a", [1, 2]), ("b", [3, 4, 5])], queries=[0, 0],
                     marks=[[True, False], [True, True, False]], path=tmp_path / "g.png", title="t")
    assert len(fig.axes) == 2 * 4 and (tmp_path / "g.png").stat().st_size > 500
