"""Prediction files: pairs of reference and predicted text, read strictly.

Formats: `molt5` (the MolT5 repository's files: a header line, then SMILES<TAB>ground truth<TAB>output)
and `jsonl` (one object per line with `reference` and `prediction`, optional `id`, `task`,
`property`). A line that does not parse is an error naming its number: a score over a silently
shortened file would not be comparable with anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


class PredictionFileError(ValueError):
    pass


@dataclass(frozen=True)
class Prediction:
    id: str
    reference: str
    prediction: str
    property: str | None = None  # for property QA: which property the question asked


def read_predictions(path: Path, fmt: str = "auto") -> list[Prediction]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no prediction file at {path}")
    if fmt == "auto":
        fmt = "jsonl" if path.suffix in (".jsonl", ".json") else "molt5"
    text = path.read_text(encoding="utf-8")
    if fmt == "molt5":
        return _read_molt5(path, text)
    if fmt == "jsonl":
        return _read_jsonl(path, text)
    raise PredictionFileError(f"unknown prediction format {fmt!r}: expected molt5 or jsonl")


def _read_molt5(path: Path, text: str) -> list[Prediction]:
    lines = text.splitlines()
    if not lines or lines[0].split("\t")[:3] != ["SMILES", "ground truth", "output"]:
        raise PredictionFileError(f"{path}: not a MolT5 prediction file (header 'SMILES<TAB>ground truth<TAB>output')")
    out = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != 3:
            raise PredictionFileError(f"{path}, line {number}: {len(fields)} tab-separated fields, expected 3")
        out.append(Prediction(id=fields[0], reference=fields[1], prediction=fields[2]))
    return out


def _read_jsonl(path: Path, text: str) -> list[Prediction]:
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PredictionFileError(f"{path}, line {number}: not JSON ({exc.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("reference"), str) or not isinstance(obj.get("prediction"), str):
            raise PredictionFileError(f"{path}, line {number}: needs string fields 'reference' and 'prediction'")
        out.append(Prediction(id=str(obj.get("id", number)), reference=obj["reference"], prediction=obj["prediction"],
                              property=obj.get("property")))
    return out


def write_jsonl(predictions: list[Prediction], path: Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for p in predictions:
            record = {"id": p.id, "reference": p.reference, "prediction": p.prediction}
            if p.property is not None:
                record["property"] = p.property
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
