"""fxdecomp: compile vision models into exact sums of component contributions."""
from . import models_registry, rules  # noqa: F401  (rules: registers the op rules)
from .compiler import decompose
from .components import Component, ComponentTable
from .decomposition import Decomposition
from .errors import (
                     CollapseWarning,
                     FxDecompError,
                     InputError,
                     TraceError,
                     UnknownComponentError,
                     UnsupportedOpError,
)
from .module import DecomposedModel
from .rules import Rule, register_rule, unregister_rule

__version__ = "0.1.0"

__all__ = [
    "decompose", "DecomposedModel", "Decomposition", "Component", "ComponentTable", "register_rule",
    "unregister_rule", "Rule", "FxDecompError", "TraceError", "UnsupportedOpError", "InputError",
    "UnknownComponentError", "CollapseWarning",
]
