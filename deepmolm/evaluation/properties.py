"""Property question answering: the first number of each answer, judged against a plausible range.

As in the DeepMoLM protocol, an answer is valid when a number can be read from it and that number
lies in the property's plausible range (params.yaml, eval.property_ranges); the MAE is over valid
answers only, and the valid-answer ratio says how many that was. Units, words around the number
and later numbers are ignored; a Unicode minus and scientific notation (1.2e-3, 1.2 x 10^-3) are
read.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass

from deepmolm.evaluation.predictions import Prediction

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


@dataclass
class PropertyScore:
    n: int
    valid: int
    unparseable: int
    out_of_range: int
    mae: float | None

    @property
    def valid_ratio(self) -> float:
        return self.valid / self.n if self.n else 0.0

    def as_dict(self) -> dict:
        return {"n": self.n, "valid": self.valid, "valid_ratio": round(self.valid_ratio, 6),
                "unparseable": self.unparseable, "out_of_range": self.out_of_range,
                "mae": None if self.mae is None else round(self.mae, 6)}


def score_properties(predictions: list[Prediction], ranges: dict[str, tuple[float, float]]) -> dict[str, PropertyScore]:
    """Per property. A reference that has no number or an unknown property is an error (the
    prediction file is wrong, not the model)."""
    errors: dict[str, list[float]] = defaultdict(list)
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # n, unparseable, out of range
    for p in predictions:
        if p.property not in ranges:
            raise ValueError(f"prediction {p.id}: property {p.property!r} is not one of {', '.join(sorted(ranges))}")
        truth = first_number(p.reference)
        if truth is None:
            raise ValueError(f"prediction {p.id}: the reference {p.reference!r} holds no number")
        counts[p.property][0] += 1
        answer = first_number(p.prediction)
        low, high = ranges[p.property]
        if answer is None:
            counts[p.property][1] += 1
        elif not low <= answer <= high:
            counts[p.property][2] += 1
        else:
            errors[p.property].append(abs(answer - truth))
    return {
        name: PropertyScore(n=n, valid=len(errors[name]), unparseable=bad, out_of_range=far,
                            mae=(sum(errors[name]) / len(errors[name])) if errors[name] else None)
        for name, (n, bad, far) in sorted(counts.items())
    }


def mean_baseline(train_values: dict[str, list[float]], predictions: list[Prediction]) -> dict[str, dict]:
    """Always answering the training molecules' mean: the MAE a model must beat to have read anything
    of the molecule. Per property: the mean, how many training values it rests on, and its MAE on
    the references of `predictions`."""
    references: dict[str, list[float]] = defaultdict(list)
    for p in predictions:
        truth = first_number(p.reference)
        if truth is not None:
            references[p.property].append(truth)
    out = {}
    for name, truths in sorted(references.items()):
        values = train_values.get(name) or []
        if not values:
            continue
        mean = sum(values) / len(values)
        out[name] = {"mean": round(mean, 6), "train_values": len(values),
                     "mae": round(sum(abs(t - mean) for t in truths) / len(truths), 6)}
    return out
