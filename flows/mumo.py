"""MuMo as Prefect flows: MLM pretraining on a shard version (MOSES's), then the property benchmark (each a
Ray Train run; the flow records it, retries nothing by itself: Ray Train resumes from checkpoints)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from deepmolm.config import load_params
from flows.api import prefect_api


@task(name="mumo-pretrain")
def pretrain_task(shards: str | None, params_file: str, overrides: list[str], progress: bool) -> dict:
    from deepmolm.evaluation.mumo.benchmark import pretrain

    return pretrain(load_params(Path(params_file), overrides), shards=Path(shards) if shards else None, progress=progress)


@task(name="mumo-benchmark")
def benchmark_task(pretrained: str | None, params_file: str, overrides: list[str], progress: bool) -> dict:
    from deepmolm.evaluation.mumo.benchmark import benchmark

    return benchmark(load_params(Path(params_file), overrides), pretrained=Path(pretrained) if pretrained else None,
                     progress=progress)


@flow(name="mumo-pretrain", log_prints=True)
def mumo_pretrain_flow(shards: str | None = None, params_file: str = "params.yaml", overrides: list[str] | None = None,
                       progress: bool = False) -> dict:
    summary = pretrain_task(shards, params_file, overrides or [], progress)
    print(f"MuMo pretrained on {summary['molecules']} molecules: MLM loss {summary['first_loss']:.3f} -> "
          f"{summary['last_loss']:.3f} in {summary['steps']} steps")
    return summary


@flow(name="mumo-benchmark", log_prints=True)
def mumo_benchmark_flow(pretrained: str | None = None, params_file: str = "params.yaml",
                        overrides: list[str] | None = None, progress: bool = False) -> dict:
    summary = benchmark_task(pretrained, params_file, overrides or [], progress)
    for row in summary["table"]:
        print(f"{row['dataset']} {row['split']} layer {row['injection_layer']}: MuMo RMSE {row['mumo_rmse']} "
              f"vs random forest {row['rf_rmse']}")
    return summary


def run_mumo(kind: str, path: Path | None, params_file: Path, overrides: list[str], progress: bool = True) -> dict:
    resolved = str(Path(path).resolve()) if path else None
    with prefect_api():
        flow_fn = mumo_pretrain_flow if kind == "pretrain" else mumo_benchmark_flow
        return flow_fn(resolved, str(Path(params_file).resolve()), list(overrides), progress)
