"""Errors that say what went wrong and what to do about it."""
from __future__ import annotations


class FxDecompError(Exception):
    """Base class for fxdecomp errors."""


class TraceError(FxDecompError):
    """The model could not be traced into a graph."""


class UnsupportedOpError(FxDecompError):
    """An op the decomposition has to pass through has no (suitable) rule."""


class InputError(FxDecompError, ValueError):
    """Images or arguments that do not fit the compiled model."""


class UnknownComponentError(FxDecompError, KeyError):
    """A component name or index that does not exist."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else ""


class CollapseWarning(UserWarning):
    """The residual stream passed through a nonlinearity: everything before it is one component."""
