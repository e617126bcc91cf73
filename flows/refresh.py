"""The scheduled dataset refresh (deployment `refresh-dataset`): for each configured source, ingest,
featurize, validate and write the data-quality page, each a child flow run of this one; then record
the new outputs in dvc.lock (`dvc commit`), so `dvc repro` and `dvc push` see them as the pipeline's.
A run whose overrides change a param of those stages commits nothing and says which
(deepmolm/data/refresh_commit.py).

Incremental by construction: a snapshot's id is its content's hash (an unchanged source is the same
snapshot), and featurization reuses every molecule an earlier shard version already holds.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import dask
from prefect import flow, get_run_logger, task

from deepmolm.config import load_params
from deepmolm.data.ingest import refresh_request
from deepmolm.data.refresh_commit import commit_plan
from flows.api import prefect_api, quiet_dask_logs
from flows.featurize import LOCAL_CLUSTER_CONFIG, featurize_flow, task_runner
from flows.ingest import ingest_flow
from flows.validate import validate_flow

@task(name="dvc-commit")
def dvc_commit_task(project: str, stages: list[str]) -> list[str]:
    from dvc.repo import Repo

    with Repo(project) as repo:
        for stage in stages:
            repo.commit(stage, force=True)
    return stages


@flow(name="refresh-dataset", log_prints=True)
def refresh_dataset_flow(project: str = ".", params_file: str = "params.yaml", overrides: list[str] | None = None) -> dict:
    project_dir = Path(project).resolve()
    params_path = str(project_dir / params_file)
    overrides = list(overrides or [])
    params = load_params(Path(params_path), overrides)
    refreshed = {}
    for source in params.refresh.sources:
        raw = ingest_flow(asdict(refresh_request(source, params)), params_path, overrides)
        quiet_dask_logs()
        with dask.config.set(LOCAL_CLUSTER_CONFIG):
            shards = featurize_flow.with_options(task_runner=task_runner(params.featurize.dask))(
                raw["out"], None, params_path, overrides)
        contract = validate_flow(shards["out"], params_path, overrides, report=True)  # raises when it fails
        refreshed[source] = {"snapshot": raw["snapshot"], "version": shards["version"], "shards": shards["out"],
                             "accepted": shards["accepted"], "rejected": shards["rejected"], "reused": shards["reused"],
                             "contract": contract["success"], "report": contract["report"]}
        print(f"{source}: snapshot {raw['snapshot']} -> shard version {shards['version']} "
              f"({shards['accepted']} accepted, {shards['rejected']} rejected, {shards['reused']} reused), contract passed")
    committed, refused = [], None
    if params.refresh.dvc_commit:
        stages, refused = commit_plan(project_dir, params_path, overrides, list(params.refresh.sources))
        if refused:
            get_run_logger().warning(refused)
        else:
            committed = dvc_commit_task(str(project_dir), stages)
            print(f"dvc commit: {', '.join(committed) or 'no stages of these sources in dvc.yaml'}")
    return {"sources": refreshed, "dvc_committed": committed, "dvc_commit_refused": refused}


def run_refresh(project: Path, params_file: Path, overrides: list[str]) -> dict:
    with prefect_api():
        return refresh_dataset_flow(str(Path(project).resolve()), str(params_file), list(overrides))
