"""The evaluate stage: the trained model and two baselines on the same held-out molecules.

The model and the retrieval baseline answer the molecules of `eval.splits` (ChEBI-20's test split by
default), or with `eval.on_holdout` the molecules `train.holdout` kept out of training (what a
recipe is tuned on). The retrieval pool is the training molecules (`train.splits` without the
holdout), so neither has seen the answers; the mean baseline answers every property question with
the training molecules' mean. Captions also get the share that is degenerate (a loop). Writes, under
`<reports_dir>/eval/`: the two prediction files (JSON lines, readable by `deepmolm eval captions`),
metrics.json with the scores and the sizes they rest on, which DVC shows as metrics (with
`drawing_dependence`: a subset answered again without the drawing and without E3FP), and
grounding.png, what the Fusion Projector's cross-attention looks at (evaluation/grounding.py).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import torch

from deepmolm.config import Params
from deepmolm.data.instructions import held_out, instruction_shards
from deepmolm.data.shards.parts import read_manifest
from deepmolm.evaluation.baseline import retrieve
from deepmolm.evaluation.captions import load_metric_tokenizer, score_captions
from deepmolm.evaluation.degenerate import degenerate_share
from deepmolm.evaluation.drawing_dependence import drawing_dependence
from deepmolm.evaluation.examples import capped, examples_of_splits
from deepmolm.evaluation.grounding import write_grounding
from deepmolm.evaluation.model_answers import answer_examples
from deepmolm.evaluation.outputs import BASELINE_PREDICTIONS, MODEL_PREDICTIONS, evaluation_dir
from deepmolm.evaluation.predictions import Prediction, write_jsonl
from deepmolm.evaluation.properties import mean_baseline, score_properties
from deepmolm.evaluation.shard_molecules import read_molecule_parts, read_molecules
from deepmolm.models.deepmolm.configuration import DeepMoLMConfig
from deepmolm.models.deepmolm.drawing_store import Drawings, build_drawings
from deepmolm.models.deepmolm.generation import checkpoint_image_size, task_decoding
from deepmolm.models.deepmolm.presets import model_summary
from deepmolm.runtime.progress import progress_bar
from deepmolm.runtime import numerics
from deepmolm.runtime.run_log import log_run
from deepmolm.store.versions import MANIFEST
from deepmolm.training.checkpoints import PROVENANCE
from deepmolm.training.driver import log_metrics

def evaluate(params: Params, model_dir: Path, instructions: Path, out: Path | None = None, progress: bool = False) -> dict:
    """Answer, score and write; returns the metrics."""
    started = time.perf_counter()
    out = Path(out) if out else evaluation_dir(params)
    cfg = params.eval
    rows = evaluation_rows(params, instructions)
    if not rows:
        where = "train.holdout's molecules" if cfg.on_holdout else f"splits {cfg.splits}"
        raise ValueError(f"instruction set {instructions} has no examples of {where}: nothing to evaluate on")
    # the drawings training shrank (built here, once, for a model trained elsewhere)
    image_size = checkpoint_image_size(model_dir)
    drawings = Drawings(build_drawings(instruction_shards(instructions), image_size, params.paths.cache_dir / "drawings"))

    def drawing(row: dict) -> torch.Tensor:
        return drawings.pixels(row["image_part"], row["image_row"])

    with progress_bar("answer held-out examples", len(rows), enabled=progress) as advance:
        answers = answer_examples(model_dir, instructions, rows, batch_size=cfg.batch_size,
                                  decoding=lambda task: task_decoding(params, task), advance=advance, drawing=drawing)
    tasks = {r["example_id"]: r["task"] for r in rows}
    captions = [p for p in answers if tasks[p.id] == "caption"]
    properties = [p for p in answers if tasks[p.id] == "property_qa"]
    write_jsonl(answers, out / MODEL_PREDICTIONS)
    grounding = write_grounding(params, model_dir, instructions, rows, out)
    metric_tokenizer = load_metric_tokenizer(cfg.tokenizer)

    shards = instruction_shards(instructions)
    train_rows = training_rows(params, instructions)
    baseline = _baseline(params, shards, {r["cid"] for r in train_rows if r["task"] == "caption"},
                         {r["cid"] for r in rows if r["task"] == "caption"})
    write_jsonl(baseline["predictions"], out / BASELINE_PREDICTIONS)

    dependence = drawing_dependence(params, model_dir, instructions, rows, answers, drawing, image_size,
                                    lambda tasks, predictions: scored(params, tasks, predictions, metric_tokenizer),
                                    progress=progress)

    manifest = json.loads((Path(instructions) / MANIFEST).read_text())
    summary = model_summary(DeepMoLMConfig.from_pretrained(model_dir))
    metrics = {
        "dataset": {
            "name": read_manifest(shards)["dataset"], "shard_version": shards.name, "instruction_set": Path(instructions).name,
            "eval_splits": "train.holdout" if cfg.on_holdout else list(cfg.splits),
            "eval_molecules": len({r["cid"] for r in rows}),
            "train_molecules": len({r["cid"] for r in train_rows}),
            "eval_examples": dict(Counter(r["task"] for r in rows)),
            "train_splits": list(params.train.splits) if params.train.splits else "every row, the held-out ones too",
            "instruction_examples": manifest.get("summary", {}).get("examples_by_task"),
        },
        "model": {"run": _trained_by(model_dir), "preset": params.model.preset,
                  "parameters": summary["total"], "image_size": summary["image_size"],
                  "visual_tokens": summary["visual_tokens"], **scored(params, tasks, answers, metric_tokenizer)},
        "baseline": {"fingerprint": params.eval.baseline.fingerprint, "pool_molecules": baseline["pool"],
                     "mean_similarity": baseline["mean_similarity"],
                     "captions": caption_scores(params, baseline["predictions"], metric_tokenizer)},
        "mean_baseline": {"properties": mean_baseline(_property_values(train_rows), properties)},
        "drawing_dependence": dependence,
        "without_conformer": without_conformer(params, rows, tasks, answers, metric_tokenizer),
        "references": {"degenerate": degenerate_share([p.reference for p in captions])},
        "grounding": {"molecules": len(grounding["molecules"]),
                      "null_share": _mean([m["null_share"] for m in grounding["molecules"]])},
    }
    log_metrics(out, [], metrics)  # through dvclive, as training's: METRICS is its summary file
    seconds = round(time.perf_counter() - started, 1)
    log_run(params.paths.logs_dir, "evaluate", out, model=str(model_dir), seconds=seconds, numerics=numerics.applied())
    return {**metrics, "seconds": seconds}


def caption_scores(params: Params, pairs: list[Prediction], metric_tokenizer) -> dict | None:
    """The MolT5 protocol's metrics of caption predictions and the share that is degenerate."""
    if not pairs:
        return None
    cfg = params.eval
    scores = score_captions(pairs, metric_tokenizer, max_tokens=cfg.max_tokens, nltk_data=cfg.nltk_data).as_dict()
    return {**scores, "degenerate": degenerate_share([p.prediction for p in pairs])}


def scored(params: Params, tasks: dict[str, str], answers: list[Prediction], metric_tokenizer) -> dict:
    """A model's answers scored: "captions" (caption_scores) and "properties" (per property, valid
    ratio and MAE); `tasks` maps an answer's id to its task."""
    properties = [p for p in answers if tasks[p.id] == "property_qa"]
    return {"captions": caption_scores(params, [p for p in answers if tasks[p.id] == "caption"], metric_tokenizer),
            "properties": {k: v.as_dict() for k, v in score_properties(properties, params.eval.property_ranges).items()}}


def without_conformer(params: Params, rows: list[dict], tasks: dict[str, str], answers: list[Prediction],
                      metric_tokenizer) -> dict:
    """The molecules answered from the drawing alone because they have no E3FP (no conformer: too many
    heavy atoms for featurize.conformer, or no embedding), scored apart: the paper's open question 1."""
    ids = {r["example_id"] for r in rows if r["e3fp"] is None}
    molecules = len({r["cid"] for r in rows if r["e3fp"] is None})
    return {"molecules": molecules, **(scored(params, tasks, [a for a in answers if a.id in ids], metric_tokenizer)
                                       if ids else {"captions": None, "properties": {}})}


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def _trained_by(model_dir: Path) -> str | None:
    """The training run that exported the model (its name is a digest of what it learned from)."""
    provenance = Path(model_dir) / PROVENANCE
    return json.loads(provenance.read_text()).get("run") if provenance.is_file() else None


def evaluation_rows(params: Params, instructions: Path) -> list[dict]:
    """The examples answered: of eval.splits, or of train.holdout's molecules with eval.on_holdout."""
    cfg = params.eval
    if not cfg.on_holdout:
        return examples_of_splits(instructions, cfg.splits, params.instructions.tasks, cfg.max_examples_per_task)
    holdout = params.train.holdout
    rows = [r for r in examples_of_splits(instructions, _train_splits(params), params.instructions.tasks, None)
            if held_out(r["cid"], holdout.fraction, holdout.seed)]
    return capped(rows, params.instructions.tasks, cfg.max_examples_per_task)


# what is read of the training examples: their molecules (the baseline's pool) and answers (the mean baseline)
TRAINING_COLUMNS = ["cid", "task", "property", "answer_value"]


def training_rows(params: Params, instructions: Path) -> list[dict]:
    """The examples of the molecules training learned from (train.splits without the holdout)."""
    holdout = params.train.holdout
    return [r for r in examples_of_splits(instructions, _train_splits(params), params.instructions.tasks, None,
                                          columns=TRAINING_COLUMNS)
            if not held_out(r["cid"], holdout.fraction, holdout.seed)]


def _train_splits(params: Params) -> list[str]:
    return list(params.train.splits or ["train", "validation", "test"])


def _property_values(rows: list[dict]) -> dict[str, list[float]]:
    values: dict[str, list[float]] = {}
    for row in rows:
        if row["task"] == "property_qa" and row["answer_value"] is not None:
            values.setdefault(row["property"], []).append(row["answer_value"])
    return values


def _baseline(params: Params, shards: Path, pool_cids: set[int], query_cids: set[int]) -> dict:
    """Retrieval for the molecules the model captioned, from the captioned training molecules."""
    cfg = params.eval.baseline
    e3fp = cfg.fingerprint == "e3fp"
    queries = sorted(read_molecules(shards, cids=query_cids, e3fp=e3fp), key=lambda m: m.cid)
    if not queries:
        return {"predictions": [], "pool": len(pool_cids - query_cids), "mean_similarity": None}
    try:
        results, pool = retrieve(queries, read_molecule_parts(shards, cids=pool_cids - query_cids, e3fp=e3fp),
                                 kind=cfg.fingerprint, radius=cfg.morgan_radius, bits=cfg.morgan_bits)
    except ValueError as exc:
        raise ValueError(f"no captioned training molecules (splits {params.train.splits}) to retrieve from") from exc
    return {"predictions": [p for p, _ in results], "pool": pool,
            "mean_similarity": round(sum(s for _, s in results) / len(results), 4)}
