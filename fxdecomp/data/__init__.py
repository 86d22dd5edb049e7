"""Data sources read by the command line and the applications: image folders (flat or one
subfolder per class), Waterbirds-layout folders (``metadata.csv``) and the synthetic world."""
from .folder import ImageFolder
from .images import EXTENSIONS, load_image
from .registry import SourceType, describe_source, open_data, register_source, reopen, source_types
from .waterbirds import WaterbirdsFolder, is_waterbirds
from .world import WorldImages, WorldSpurious, parse_world

__all__ = ["EXTENSIONS", "ImageFolder", "SourceType", "WaterbirdsFolder", "WorldImages", "WorldSpurious",
           "describe_source", "is_waterbirds", "load_image", "open_data", "parse_world", "register_source", "reopen",
           "source_types"]
