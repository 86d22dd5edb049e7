"""Checks of the Python API's numeric arguments: whole numbers and finite numbers, refused with the
range they must be in (a NaN learning rate, a batch of 0 or 1.5 would otherwise crash deep inside,
or quietly give a useless result)."""
from __future__ import annotations

import math
import numbers

from .errors import InputError


def whole_number(name: str, value, low: int = 1) -> None:
    """``value`` must be an integer (not a bool, not 1.5) >= ``low``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise InputError(f"{name} must be a whole number >= {low}, got {value!r}")


def finite_number(name: str, value, low: float = 0.0, *, inclusive: bool = True) -> None:
    """``value`` must be a finite real number >= ``low`` (> ``low`` unless ``inclusive``)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (not inclusive and value == low):
        raise InputError(f"{name} must be a finite number {'>=' if inclusive else '>'} {low:g}, got {value!r}")
