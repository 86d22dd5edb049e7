"""Token heatmaps: a token-granularity decomposition put back on the image.

``heatmap(out, image, component="blocks.5.attn[h2]")`` draws where one head's output
comes from; ``text="sea"`` (with ``clip`` and an ``aligner``) where a text direction
does; ``direction=`` any vector of the output space. ``token_maps`` gives the maps of
a whole batch as a tensor. Any grid works: the tokens' own ``row``/``col`` place them.
``token_reader(model, text=..., clip=..., aligner=...)`` compiles the reading in, so maps come
straight from images without any contribution of the output's width.
"""
from .compiled import ONE, token_reader
from .heatmap import Heatmap, draw, heatmap, text_direction, token_maps
from .layout import TokenLayout, has_tokens, token_layout
from .maps import finest, grid_maps, grid_vectors, pixel_maps
from .values import along_direction, members, norms, shares

__all__ = ["ONE", "token_reader", "Heatmap", "TokenLayout", "along_direction", "draw", "finest", "grid_maps", "grid_vectors", "has_tokens", "heatmap", "members",
           "norms", "pixel_maps", "shares", "text_direction", "token_layout", "token_maps"]
