"""An HTML report of a run: ``write_report(run, out)`` (``fxdecomp explain RUN --out REPORT``)."""
from .build import write_report
from .vocabulary import PAPER_PROPERTIES, properties_for, world_properties

__all__ = ["PAPER_PROPERTIES", "properties_for", "world_properties", "write_report"]
