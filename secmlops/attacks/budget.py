"""Perturbation budgets as users write them: "4/255" or 0.0157, read by one rule everywhere.

Kept free of torch so the trigger form's parameters can be checked at the edge (DAG task,
command line) without importing the attack code.
"""

from __future__ import annotations

import math
import re

from secmlops.errors import ModelError

EPS_PATTERN = re.compile(r"\s*([0-9.]+)\s*/\s*([0-9.]+)\s*")


def parse_eps(text: str | float) -> float:
    """Read an eps given as a fraction of the pixel range ("4/255") or a number ("0.0157").

    Raises:
        ModelError: the text is neither, or the value is not positive.
    """
    if isinstance(text, int | float):
        value = float(text)
    else:
        match = EPS_PATTERN.fullmatch(text)
        try:
            value = float(match[1]) / float(match[2]) if match else float(text)
        except (ValueError, ZeroDivisionError):
            raise ModelError(f"eps {text!r}: expected a number like 0.0157 or 4/255") from None
    if not (value > 0 and math.isfinite(value)):
        raise ModelError(f"eps {text!r}: must be a positive number")
    return value
