"""Text- and image-based retrieval with a model's components (the paper's applications).

Image queries: nearest neighbours in the subspace of a property's components (their summed
aligned contributions), chosen by ``property_components``. Text queries: images ranked along
a description's text direction, read from the components ``description_components`` picks
for it. ``precision_at_k`` measures both; ``image_grid`` draws what was found.
``by_image_over_run`` and ``by_text_over_run`` do both over a run store, one shard at a time.
"""
from .choose import description_components, property_components, text_direction_against
from .figure import image_grid
from .over_run import by_image_over_run, by_text_over_run
from .search import by_text, component_sum, nearest, precision_at_k, top_images

__all__ = ["by_image_over_run", "by_text", "by_text_over_run", "component_sum", "description_components", "image_grid",
           "nearest", "precision_at_k", "property_components", "text_direction_against", "top_images"]
