"""The number in an answer, read one way everywhere: property scoring and the choice among candidate
answers at generation (`generation.median_answer`) must agree on what an answer says."""

from __future__ import annotations

import math
import re

_MINUS = str.maketrans({"\u2212": "-", "\u2013": "-", "\u2014": "-"})
_NUMBER = re.compile(
    r"(?<![\w.])"                      # not inside a word or another number (C3H8, 1.2.3)
    r"([-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+)"  # 12, -3.5, 1,234.5, .5
    r"(?:\s*(?:[eE]([-+]?\d+)|[x\u00d7\*]\s*10\s*\^?\s*\(?([-+]?\d+)\)?))?"  # e-3, x 10^-3
)


def first_number(text: str) -> float | None:
    """The first number in `text`, or None."""
    match = _NUMBER.search(text.translate(_MINUS))
    if not match:
        return None
    value = float(match.group(1).replace(",", ""))
    exponent = match.group(2) or match.group(3)
    if exponent is not None:
        value *= 10.0 ** int(exponent)
    return value if math.isfinite(value) else None
