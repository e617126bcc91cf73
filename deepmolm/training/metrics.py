"""Scores a training loop computes on its own validation and test rows (the MuMo loop picks its best
epoch by validation RMSE); the evaluation layer reports them beside its baselines."""

from __future__ import annotations

import numpy as np


def regression_errors(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    error = np.asarray(predicted, dtype=np.float64) - np.asarray(truth, dtype=np.float64)
    return {"rmse": float(np.sqrt(np.mean(error ** 2))), "mae": float(np.mean(np.abs(error))), "n": int(error.size)}
