"""Lookup table from graph targets (ATen ops, builtins) to rules.

Users extend it with :func:`register_rule`; the compiler refuses to guess about
any op it meets on the residual stream or in a branch's linear tail that has no
rule here.
"""
from __future__ import annotations

from typing import Any, Callable

from ..core.step import RULE_STEPS
from .base import Rule

_RULES: dict[Any, Rule] = {}


def _key_candidates(target: Any) -> list[Any]:
    keys = [target]
    packet = getattr(target, "overloadpacket", None)
    if packet is not None:
        keys.append(packet)
    return keys


def rule_for(target: Any) -> Rule | None:
    for k in _key_candidates(target):
        r = _RULES.get(k)
        if r is not None:
            return r
    return None


def rules_for(*targets: Any) -> Callable[[type], type]:
    """Class decorator registering one instance of the rule for each target."""

    def deco(cls: type) -> type:
        add_rule(cls(), *targets)
        return cls

    return deco


def add_rule(rule: Rule, *targets: Any) -> Rule:
    """Register ``rule`` for each target (the built-in tables; users call ``register_rule``)."""
    for t in targets:
        _RULES[t] = rule
    return rule


def register_rule(op: Any, rule: Rule | None = None, *, kind: str | None = None) -> Rule:
    """Teach the compiler an op it does not know.

    Either give a full :class:`~fxdecomp.rules.base.Rule` instance, or a ``kind``:

    * ``"nonlinear"`` — an elementwise op that is not linear (its output keeps its
      input's axes); inside a branch it is computed from actual values, on the
      stream it ends the decomposition there.
    * ``"identity"`` — an op that returns its first argument's values unchanged
      (casts, copies, no-op wrappers); it is linear and passes everything through.

    ``op`` is the graph target as printed in the error, e.g.
    ``torch.ops.mylib.fused_gelu.default``.
    """
    if rule is None:
        from .elementwise import IdentityRule, UnaryNonlinear

        if kind == "nonlinear":
            rule = UnaryNonlinear()
        elif kind == "identity":
            rule = IdentityRule()
        else:
            raise ValueError(
                f"register_rule(op, kind=...) takes kind='nonlinear' or 'identity' (got {kind!r}); "
                "for anything else pass a Rule instance"
            )
    if not isinstance(rule, Rule):
        raise TypeError("rule must be an instance of fxdecomp.rules.Rule")
    if rule.step not in RULE_STEPS:
        raise ValueError(f"rule.step must be one of {', '.join(map(repr, RULE_STEPS))}, got {rule.step!r}")
    _RULES[op] = rule
    return rule


def unregister_rule(op: Any) -> None:
    _RULES.pop(op, None)


__all__ = ["rule_for", "rules_for", "add_rule", "register_rule", "unregister_rule"]
