"""Featurize as a Prefect flow: one task per part, spread over Dask worker processes.

The work is deepmolm.data.shards.build's; this module only chooses the Dask cluster (a local one of
`featurize.dask.workers` processes, or an existing scheduler), submits one task per missing part,
shows progress over molecules and publishes. A task whose worker dies is re-run by Dask on another
worker, and a task that fails is retried by Prefect (`featurize.task_retries`).
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import dask
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect_dask import DaskTaskRunner

from deepmolm.config import DaskParams, load_params
from deepmolm.data.shards.build import Chunk, VersionPlan, build_part, finish_version, plan_version
from deepmolm.data.shards.parts import PartResult
from deepmolm.data.shards.sfp_table import SfpPart, pending_parts, publish_sfp, write_sfp_part
from deepmolm.data.sources.raw_table import resolve_snapshot
from deepmolm.runtime.progress import progress_bar
from flows.api import prefect_api, quiet_dask_logs

SCHEDULER_ENV = "DEEPMOLM_DASK_SCHEDULER"

# Dask's housekeeping for the local cluster, turned down: every worker samples its own stack 100
# times a second for the dashboard's profile, and its nanny polls memory 10 times a second. With
# one worker per core that CPU is taken from the molecules (about 1 s per worker per minute here).
LOCAL_CLUSTER_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.memory.monitor-interval": "1s",
}


@task(name="featurize-part", cache_policy=NO_CACHE)
def featurize_part(plan: VersionPlan, chunk: Chunk) -> PartResult:
    return build_part(plan, chunk)


@task(name="sfp-part", cache_policy=NO_CACHE)
def sfp_part(version_dir: str, part: str) -> SfpPart:
    return write_sfp_part(Path(version_dir), part)


@flow(name="featurize", log_prints=True)
def featurize_flow(raw: str, out_root: str | None = None, params_file: str = "params.yaml",
                   overrides: list[str] | None = None, progress: bool = False) -> dict:
    started = time.perf_counter()
    params = load_params(Path(params_file), overrides or [])
    plan = plan_version(Path(raw), Path(out_root) if out_root else params.paths.shards_dir, params)
    missing = plan.missing()
    slim = dataclasses.replace(plan, chunks=())  # each task carries its own chunk only
    part_task = featurize_part.with_options(retries=params.featurize.task_retries,
                                            retry_delay_seconds=params.featurize.task_retry_delay_s)
    futures = [part_task.submit(slim, chunk) for chunk in missing]
    results = []
    total = sum(c.stop - c.start for c in missing)
    with progress_bar(f"featurize {plan.dataset}", total, enabled=progress) as advance:
        for future in as_completed(futures):
            result = future.result()
            results.append(result)
            advance(result.rows + result.rejected)
    summary = finish_version(plan, results, started)
    if params.mumo.sfp and (pending := pending_parts(Path(summary.out))):
        done = [future.result() for future in as_completed([sfp_part.submit(summary.out, p) for p in pending])]
        sfp = publish_sfp(Path(summary.out), done)["counts"]
        print(f"unified graphs (MuMo's SFP): {sfp['graphs']} molecules, {sfp['rejected']} without a usable conformer")
    print(
        f"{summary.dataset} version {summary.version}: {summary.input_rows} input rows = {summary.accepted} accepted "
        f"+ {summary.rejected} rejected ({summary.reused} reused, {summary.resumed_parts} parts resumed)"
    )
    return summary.as_dict()


def task_runner(dask: DaskParams, workers: int | None = None, scheduler: str | None = None) -> DaskTaskRunner:
    """The CLI's --scheduler, else $DEEPMOLM_DASK_SCHEDULER, else params; no address: a local cluster."""
    address = scheduler or os.environ.get(SCHEDULER_ENV) or dask.scheduler_address
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": workers or dask.workers,
            "threads_per_worker": dask.threads_per_worker,
            "processes": True,
            "memory_limit": dask.memory_limit,
            "dashboard_address": None,
            "preload": ["flows.dask_worker_setup"],
        },
    )


def run_featurize(raw: Path, out_root: Path | None, params_file: Path, overrides: list[str], *,
                  workers: int | None = None, scheduler: str | None = None, progress: bool = True) -> dict:
    params = load_params(params_file, overrides)
    resolve_snapshot(Path(raw))  # a missing input fails here, before a server and a cluster start
    runner = task_runner(params.featurize.dask, workers, scheduler)
    quiet_dask_logs()
    with prefect_api(), dask.config.set(LOCAL_CLUSTER_CONFIG):
        return featurize_flow.with_options(task_runner=runner)(
            str(Path(raw).resolve()),
            str(Path(out_root).resolve()) if out_root else None,
            str(Path(params_file).resolve()),
            list(overrides),
            progress,
        )
