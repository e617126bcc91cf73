"""Training as a Prefect flow: one task per stage. Each is a Ray Train run here (a local Ray, or
train.ray_address), or, with train.cluster.address set, a Ray Jobs API job on that cluster (the
deployment `train`). The flow only schedules; planning, training and export are in deepmolm.training.deepmolm."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from deepmolm.config import load_params
from flows.api import prefect_api


class JobFailed(RuntimeError):
    pass


@task(name="train-stage")
def stage_task(stage: int, params_file: str, overrides: list[str], paths: dict[str, str | None]) -> dict:
    from deepmolm.training.deepmolm.launch import run_stage

    params = load_params(Path(params_file), overrides)
    return run_stage(params, stage, **{k: Path(v) if v else None for k, v in paths.items()})


@task(name="submit-stage")
def submit_task(stage: int, params_file: str, overrides: list[str]) -> dict:
    """`deepmolm train run --stage N` as a job on the cluster, its logs streamed into this run's."""
    from deepmolm.training.submit import submit_training

    params = load_params(Path(params_file), overrides)
    cluster = params.train.cluster
    result = submit_training(cluster.address, stage, Path(params_file).parent, Path(params_file).name, overrides,
                             cluster, wait=True, log=print)
    if not result["succeeded"]:
        raise JobFailed(f"stage {stage}: job {result['job_id']} on {cluster.address} ended {result['status']}")
    return result


@flow(name="train", log_prints=True)
def train_flow(stages: list[int], params_file: str = "params.yaml", overrides: list[str] | None = None,
               paths: dict[str, str | None] | None = None) -> list[dict]:
    overrides = overrides or []
    params_file = str(Path(params_file).resolve())
    address = load_params(Path(params_file), overrides).train.cluster.address
    summaries = []
    for stage in stages:
        if address:
            result = submit_task(stage, params_file, overrides)
            print(f"stage {stage}: job {result['job_id']} {result['status']} on {address}")
            summaries.append(result)
            continue
        summary = stage_task(stage, params_file, overrides, paths or {})
        print(f"stage {stage}: {summary['steps']} steps, loss {summary['first_loss']} -> {summary['last_loss']}, "
              f"model in {summary['model']}" + (" (up to date)" if summary["up_to_date"] else ""))
        summaries.append(summary)
    return summaries


def run_train(stages: list[int], params_file: Path, overrides: list[str], paths: dict[str, Path | None]) -> list[dict]:
    """The flow on the configured Prefect API (or a temporary one), always training here: the CLI's
    `train submit` is the way to a cluster."""
    with prefect_api():
        return train_flow(stages, str(Path(params_file).resolve()), [*overrides, "train.cluster.address=null"],
                          {k: str(Path(v).resolve()) if v else None for k, v in paths.items()})
