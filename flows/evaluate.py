"""Evaluation as a Prefect flow: the trained model and the retrieval baseline on the held-out split."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from deepmolm.config import load_params
from flows.api import prefect_api


@task(name="evaluate-model-and-baseline")
def evaluate_task(model: str, instructions: str, params_file: str, overrides: list[str], progress: bool) -> dict:
    from deepmolm.data.instructions import resolve_instruction_set
    from deepmolm.evaluation.evaluate import evaluate

    params = load_params(Path(params_file), overrides)
    return evaluate(params, Path(model), resolve_instruction_set(Path(instructions)), progress=progress)


@flow(name="evaluate", log_prints=True)
def evaluate_flow(model: str, instructions: str, params_file: str = "params.yaml", overrides: list[str] | None = None,
                  progress: bool = False) -> dict:
    metrics = evaluate_task(model, instructions, params_file, overrides or [], progress)
    model_scores, baseline_scores = metrics["model"]["captions"] or {}, metrics["baseline"]["captions"] or {}
    print(f"{metrics['dataset']['eval_molecules']} held-out molecules: BLEU-4 model {model_scores.get('bleu4')} "
          f"vs retrieval baseline {baseline_scores.get('bleu4')}; METEOR {model_scores.get('meteor')} vs "
          f"{baseline_scores.get('meteor')}")
    return metrics


def run_evaluate(model: Path, instructions: Path, params_file: Path, overrides: list[str], progress: bool = True) -> dict:
    with prefect_api():
        return evaluate_flow(str(Path(model).resolve()), str(Path(instructions).resolve()),
                             str(Path(params_file).resolve()), list(overrides), progress)
