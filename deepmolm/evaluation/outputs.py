"""Where the evaluate stage writes, for the readers of its files (the report, `eval show`) to find
them without loading the model's libraries."""

from __future__ import annotations

from pathlib import Path

from deepmolm.config import Params
from deepmolm.training.driver import SUMMARY

MODEL_PREDICTIONS = "model_predictions.jsonl"
BASELINE_PREDICTIONS = "baseline_predictions.jsonl"
METRICS = SUMMARY
GROUNDING = "grounding.png"


def evaluation_dir(params: Params) -> Path:
    return params.paths.reports_dir / "eval"
