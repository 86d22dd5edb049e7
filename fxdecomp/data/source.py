"""Opening a data source by name, as the command line gives it (each type registers itself,
``fxdecomp.data.registry``):

* ``world:N[:SEED]``: N images of the synthetic world (default seed: the evaluation split's);
* a folder with ``metadata.csv``: the Waterbirds layout;
* any other folder: images, flat or one subfolder per class.
"""
from __future__ import annotations

from .registry import describe_source, open_data, reopen
from .world import parse_world

__all__ = ["describe_source", "open_data", "parse_world", "reopen"]
