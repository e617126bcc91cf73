"""Does the model read the drawing? The same held-out examples answered again without each view.

DeepMoLM is given a molecule twice: drawn, and as E3FP geometry. A model that ignores one of them
answers the same without it. On a seeded subset of the evaluated molecules (all their examples),
the evaluate stage answers again (a) with a white picture in place of the drawing and (b) with the
E3FP tokens withheld, scores both as the model's own answers are scored, and records the deltas
(without the view minus with it, per metric): a delta near 0 says that view is not read.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import torch

from deepmolm.config import Params
from deepmolm.evaluation.captions import METRICS
from deepmolm.evaluation.model_answers import answer_examples
from deepmolm.evaluation.predictions import Prediction
from deepmolm.models.deepmolm.generation import task_decoding
from deepmolm.runtime.progress import progress_bar

WITHOUT = ("blank_drawing", "no_geometry")


def chosen_rows(rows: list[dict], molecules: int | None, seed: int) -> list[dict]:
    """All examples of `molecules` molecules drawn with `seed` (every molecule with None), in row order."""
    cids = sorted({r["cid"] for r in rows})
    if molecules is not None and molecules < len(cids):
        cids = random.Random(seed).sample(cids, molecules)
    keep = set(cids)
    return [r for r in rows if r["cid"] in keep]


def drawing_dependence(params: Params, model_dir: Path, instructions: Path, rows: list[dict],
                       answers: list[Prediction], drawing: Callable[[dict], torch.Tensor], image_size: int,
                       score: Callable[[dict[str, str], list[Prediction]], dict], progress: bool = False) -> dict:
    """The model's scores on the subset, with a blank drawing, without E3FP, and the deltas.

    `answers` are the model's answers to `rows` with both views; `drawing(row)` the pixels they were
    given; `score(tasks, answers)` the evaluation's scoring."""
    cfg = params.eval.drawing_dependence
    subset = chosen_rows(rows, cfg.molecules, cfg.seed)
    tasks = {r["example_id"]: r["task"] for r in subset}
    white = torch.full((3, image_size, image_size), 255, dtype=torch.uint8)

    with progress_bar("answer again: blank drawing, no E3FP", 2 * len(subset), enabled=progress) as advance:
        def answer(asked: list[dict], pixels: Callable[[dict], torch.Tensor]) -> list[Prediction]:
            return answer_examples(model_dir, instructions, asked, batch_size=params.eval.batch_size,
                                   decoding=lambda task: task_decoding(params, task), advance=advance, drawing=pixels)

        scores = {
            "with_both": score(tasks, [a for a in answers if a.id in tasks]),
            "blank_drawing": score(tasks, answer(subset, lambda row: white)),
            "no_geometry": score(tasks, answer([{**r, "e3fp": None} for r in subset], drawing)),
        }
    return {"molecules": len({r["cid"] for r in subset}), "examples": len(subset), "seed": cfg.seed, **scores,
            "deltas": {name: deltas(scores["with_both"], scores[name]) for name in WITHOUT}}


def deltas(with_both: dict, without: dict) -> dict:
    """Without the view minus with it: the caption metrics, and each property's MAE and valid ratio."""
    out: dict = {}
    if with_both["captions"] and without["captions"]:
        out["captions"] = {m: _diff(without["captions"][m], with_both["captions"][m]) for m in METRICS}
    out["properties"] = {name: {key: _diff(without["properties"][name][key], value[key]) for key in ("mae", "valid_ratio")}
                         for name, value in with_both["properties"].items() if name in without["properties"]}
    return out


def _diff(after: float | None, before: float | None) -> float | None:
    return None if after is None or before is None else round(after - before, 4)
