"""Is a property the model answers badly missing from what it sees, or lost in how it writes it?

A ridge regression on the trained model's own visual tokens (the Fusion Projector's output, mean and
max over the tokens) is fitted on the training molecules of `train.splits` and scored on the
`train.holdout` molecules, beside the MAE of the model's answers to the same held-out questions. A
probe far below the answers means the value is in the representation and the decoder fails to read
it out. Never the test split.

    python -m benchmarks.property_probe --checkpoint models/stage2 [--instructions data/instructions/chebi20]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from deepmolm.config import load_params
from deepmolm.data.instructions import held_out, instruction_shards, resolve_instruction_set
from deepmolm.evaluation.examples import examples_of_splits
from deepmolm.evaluation.model_answers import answer_examples
from deepmolm.evaluation.properties import first_number
from deepmolm.models.deepmolm.drawing_store import Drawings, build_drawings
from deepmolm.models.deepmolm.generation import load_checkpoint, task_decoding
from deepmolm.models.deepmolm.processing import e3fp_batch, normalise_pixels

RIDGE = 1e-2


def pooled_visual_tokens(model, drawings: Drawings, rows: list[dict], levels: int, batch: int = 64) -> np.ndarray:
    """[molecules, 2 x hidden]: what the number head reads of each molecule (model.pooled_visual)."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(rows), batch):
            chunk = rows[start:start + batch]
            pixels = normalise_pixels(torch.stack([drawings.pixels(r["image_part"], r["image_row"]) for r in chunk]),
                                      model.config.encoder_spec())
            visual = model.visual_tokens(pixels, e3fp_batch([r["e3fp"] for r in chunk], levels))
            out.append(model.pooled_visual(visual, len(chunk)).float().numpy())
    return np.concatenate(out)


def ridge_mae(features: np.ndarray, target: np.ndarray, train: np.ndarray) -> float:
    """Held-out MAE of a ridge regression (with intercept) fitted on the `train` rows."""
    design = np.c_[features, np.ones(len(features))]
    gram = design[train].T @ design[train] + RIDGE * np.eye(design.shape[1])
    weights = np.linalg.solve(gram, design[train].T @ target[train])
    return float(np.abs(design[~train] @ weights - target[~train]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("models/stage2"))
    parser.add_argument("--instructions", type=Path, default=Path("data/instructions/chebi20"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    params = load_params(args.params)
    instructions = resolve_instruction_set(args.instructions)
    model, _ = load_checkpoint(args.checkpoint)
    size, levels = model.config.encoder_spec().image_size, model.config.fusion_spec().e3fp_levels
    drawings = Drawings(build_drawings(instruction_shards(instructions), size, params.paths.cache_dir / "drawings"))
    holdout = params.train.holdout
    if params.train.splits is None:
        raise SystemExit("train.splits is null: the probe needs named training splits (never the test split)")
    rows = examples_of_splits(instructions, params.train.splits, ["property_qa"], None)
    molecules: dict[int, dict] = {}
    for row in rows:
        molecules.setdefault(row["cid"], {"row": row})[row["property"]] = row["answer_value"]
    cids = list(molecules)
    train = np.array([not held_out(cid, holdout.fraction, holdout.seed) for cid in cids])
    features = pooled_visual_tokens(model, drawings, [molecules[c]["row"] for c in cids], levels)
    asked = [r for r in rows if held_out(r["cid"], holdout.fraction, holdout.seed)]
    answers = answer_examples(args.checkpoint, instructions, asked, batch_size=params.eval.batch_size,
                              decoding=lambda task: task_decoding(params, task),
                              drawing=lambda r: drawings.pixels(r["image_part"], r["image_row"]))
    result = {"checkpoint": str(args.checkpoint), "training_molecules": int(train.sum()),
              "held_out_molecules": int((~train).sum()), "properties": {}}
    for name in params.instructions.properties:
        target = np.array([molecules[c].get(name, np.nan) for c in cids], dtype=float)
        known = ~np.isnan(target)
        errors = [abs(v - r["answer_value"]) for r, a in zip(asked, answers) if r["property"] == name
                  for v in [first_number(a.prediction)] if v is not None]
        result["properties"][name] = {
            "probe_mae": round(ridge_mae(features[known], target[known], train[known]), 3),
            "answers_mae": round(float(np.mean(errors)), 3) if errors else None,
            "answers_with_a_number": len(errors),
            "mean_baseline_mae": round(float(np.abs(target[known & ~train] - target[known & train].mean()).mean()), 3),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
