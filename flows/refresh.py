"""The scheduled dataset refresh (deployment `refresh-dataset`): for each configured source, ingest,
featurize, validate and write the data-quality page, each a child flow run of this one; then record
the new outputs in dvc.lock (`dvc commit`), so `dvc repro` and `dvc push` see them as the pipeline's.

dvc.lock records each output beside the params.yaml values it was made with. A run whose overrides
change a param of those stages made outputs params.yaml does not describe, so it commits nothing and
says which params differ: put them in params.yaml (or run `dvc exp run -S`) to record such a refresh.

Incremental by construction: a snapshot's id is its content's hash (an unchanged source is the same
snapshot), and featurization reuses every molecule an earlier shard version already holds.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import dask
import yaml
from prefect import flow, get_run_logger, task

from deepmolm.config import changed_by_overrides, load_params
from deepmolm.data.ingest import refresh_request
from flows.api import prefect_api, quiet_dask_logs
from flows.featurize import LOCAL_CLUSTER_CONFIG, featurize_flow, task_runner
from flows.ingest import ingest_flow
from flows.validate import validate_flow

# the dvc.yaml stages of one source, in order; a source without them is refreshed but not committed
SOURCE_STAGES = ("ingest", "featurize", "validate")


def dvc_stages(project: Path, sources: list[str]) -> list[str]:
    """The refreshed sources' stages that dvc.yaml declares, in pipeline order."""
    declared = (yaml.safe_load((project / "dvc.yaml").read_text()) or {}).get("stages", {})
    return [f"{step}_{source}" for source in sources for step in SOURCE_STAGES if f"{step}_{source}" in declared]


def stage_params(project: Path, stages: list[str]) -> list[str]:
    """The params.yaml keys dvc.yaml lists for these stages."""
    declared = (yaml.safe_load((project / "dvc.yaml").read_text()) or {}).get("stages", {})
    keys = []
    for stage in stages:
        for entry in declared[stage].get("params", []):
            # a key of params.yaml, or {other_file: [keys]}: only params.yaml is the refresh's
            keys += [entry] if isinstance(entry, str) else list(entry.get("params.yaml", []))
    return keys


def commit_refusal(project: Path, params_file: str, overrides: list[str], stages: list[str]) -> str | None:
    """Why the refresh must not `dvc commit` these stages, or None."""
    changed = changed_by_overrides(params_file, overrides, stage_params(project, stages))
    if not changed:
        return None
    return (f"not committed to dvc.lock: the overrides ({'; '.join(overrides)}) change {', '.join(changed)}, params of "
            f"{', '.join(stages)}, so params.yaml does not describe these outputs; put the values in params.yaml "
            f"(or run `dvc exp run -S ...`) to record such a refresh")


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
        stages = dvc_stages(project_dir, list(params.refresh.sources))
        refused = commit_refusal(project_dir, params_path, overrides, stages)
        if refused:
            get_run_logger().warning(refused)
        else:
            committed = dvc_commit_task(str(project_dir), stages)
            print(f"dvc commit: {', '.join(committed) or 'no stages of these sources in dvc.yaml'}")
    return {"sources": refreshed, "dvc_committed": committed, "dvc_commit_refused": refused}


def run_refresh(project: Path, params_file: Path, overrides: list[str]) -> dict:
    with prefect_api():
        return refresh_dataset_flow(str(Path(project).resolve()), str(params_file), list(overrides))
