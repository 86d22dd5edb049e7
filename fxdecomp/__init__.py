"""fxdecomp: compile vision models into exact sums of component contributions."""
__version__ = "0.1.0"  # first: the store's manifest reads it while the package loads

from . import models_registry, rules  # noqa: F401  (rules: registers the op rules)
from .compiler import decompose
from .components import Component, ComponentTable
from .decomposition import Decomposition
from .errors import (
                     AxisWarning,
                     CollapseWarning,
                     FxDecompError,
                     InputError,
                     RuleError,
                     TraceError,
                     UnknownComponentError,
                     UnsupportedOpError,
)
from .module import DecomposedModel
from .rules import Rule, register_rule, unregister_rule
from .store import open_run


__all__ = [
    "decompose", "DecomposedModel", "Decomposition", "Component", "ComponentTable", "register_rule",
    "unregister_rule", "Rule", "FxDecompError", "TraceError", "UnsupportedOpError", "InputError",
    "UnknownComponentError", "RuleError", "CollapseWarning", "AxisWarning", "open_run",
]
