"""Training as a Prefect flow: one task per stage, each a Ray Train run (local, or on the Ray cluster
of train.ray_address). The flow only schedules; planning, training and export are in deepmolm.train."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from deepmolm.config import load_params
from deepmolm.train.launch import run_stage
from flows.api import prefect_api


@task(name="train-stage")
def stage_task(stage: int, params_file: str, overrides: list[str], paths: dict[str, str | None]) -> dict:
    params = load_params(Path(params_file), overrides)
    return run_stage(params, stage, **{k: Path(v) if v else None for k, v in paths.items()})


@flow(name="train", log_prints=True)
def train_flow(stages: list[int], params_file: str = "params.yaml", overrides: list[str] | None = None,
               paths: dict[str, str | None] | None = None) -> list[dict]:
    summaries = []
    for stage in stages:
        summary = stage_task(stage, params_file, overrides or [], paths or {})
        print(f"stage {stage}: {summary['steps']} steps, loss {summary['first_loss']} -> {summary['last_loss']}, "
              f"model in {summary['model']}" + (" (up to date)" if summary["up_to_date"] else ""))
        summaries.append(summary)
    return summaries


def run_train(stages: list[int], params_file: Path, overrides: list[str], paths: dict[str, Path | None]) -> list[dict]:
    """The flow on the configured Prefect API (or a temporary one)."""
    with prefect_api():
        return train_flow(stages, str(Path(params_file).resolve()), list(overrides),
                          {k: str(Path(v).resolve()) if v else None for k, v in paths.items()})
