"""How the walk treats a node: the one vocabulary rules and passes share.

A rule says which step its op is (``Rule.step``) and which step one node of it is, given
which of its operands vary (``Rule.classify``); the affinity, route and expand passes act on
the answer. The same word means the same thing for an op and for a node: ``LINEAR`` is linear
in what varies.
"""
from __future__ import annotations

from enum import Enum


class Step(Enum):
    #: linear in every varying operand (a sum, a move, a mean; a product with one operand varying)
    LINEAR = "linear"
    #: linear in one operand once the others are frozen at their actual values (products,
    #: matmuls, attention) -- for a node: several operands vary, and one is carried
    MIXING = "mixing"
    #: affine once its statistics are frozen at their actual values (LayerNorm, RMSNorm, GroupNorm)
    NORM = "norm"
    #: linear once which element it selects is frozen (a max over an axis): walked through as
    #: ``LINEAR`` with ``linearize=True``, else ``NONLINEAR`` (the affinity pass decides)
    SELECTION = "selection"
    #: none of these: computed from actual values (inside a branch it is a leaf)
    NONLINEAR = "nonlinear"
    #: no rule (a node only)
    UNKNOWN = "unknown"
    #: the image (the stream's first node)
    INPUT = "input"

    def __repr__(self) -> str:
        return f"Step.{self.name}"


#: the steps a rule may give its op
RULE_STEPS = (Step.LINEAR, Step.MIXING, Step.NORM, Step.SELECTION, Step.NONLINEAR)
