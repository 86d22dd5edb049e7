"""Errors that say what went wrong and what to do about it."""
from __future__ import annotations


class FxDecompError(Exception):
    """Base class for fxdecomp errors."""


class TraceError(FxDecompError):
    """The model could not be traced into a graph."""


class UnsupportedOpError(FxDecompError):
    """An op the decomposition has to pass through has no (suitable) rule."""


class RuleError(FxDecompError):
    """A rule failed on a node it was asked about: a bug in the rule, not in the model.

    Raised rather than worked around, because falling back to opaque axes would
    quietly lose the heads and tokens the rule was there to follow."""


class InputError(FxDecompError, ValueError):
    """Images or arguments that do not fit the compiled model."""


class UnknownComponentError(FxDecompError, KeyError):
    """A component name or index that does not exist."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else ""


class CollapseWarning(UserWarning):
    """The residual stream passed through a nonlinearity: everything before it is one component."""


class AxisWarning(UserWarning):
    """An op's axes could not be followed (a known limit, such as a reshape of the batch
    axis): heads and tokens are not followed through it, so splits behind it may be coarser."""
