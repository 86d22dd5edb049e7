"""Rule tables for the ops the compiler understands (importing registers them)."""
from . import attention, einsum, elementwise, layers, movement, norms, pooling, reductions  # noqa: F401
from .base import BILINEAR, LINEAR, NONLINEAR, NORM, Rule
from .registry import register_rule, rule_for, unregister_rule

__all__ = ["Rule", "register_rule", "unregister_rule", "rule_for", "LINEAR", "BILINEAR", "NORM", "NONLINEAR"]
