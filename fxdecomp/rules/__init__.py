"""Rule tables for the ops the compiler understands (importing registers them)."""
from ..core.context import RuleContext
from ..core.step import Step
from . import (  # noqa: F401
    attention, einsum, elementwise, gather, layers, movement, norms, pooling, reductions, selection)
from .base import ALL, Rule, SympyForm
from .registry import register_rule, rule_for, unregister_rule

__all__ = ["Rule", "RuleContext", "Step", "SympyForm", "ALL", "register_rule", "unregister_rule", "rule_for"]
