"""Featurize as a Prefect flow: one task per part, spread over Dask worker processes.

The work and its order are deepmolm.data.shards.build's (`build_version`); this module only chooses
the Dask cluster (a local one of `featurize.dask.workers` processes, or an existing scheduler), makes
each part a Prefect task on it. A task whose worker dies is re-run by Dask on another worker, and a
task that fails is retried by Prefect (`featurize.task_retries`).
"""

from __future__ import annotations

import os
from pathlib import Path

import dask
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.states import Failed
from prefect_dask import DaskTaskRunner

from deepmolm.config import DaskParams, load_params
from deepmolm.data.shards.build import build_version
from deepmolm.data.sources.raw_table import resolve_snapshot
from deepmolm.store.files import StorageError
from flows.api import prefect_api, quiet_dask_logs

SCHEDULER_ENV = "DEEPMOLM_DASK_SCHEDULER"

# Dask's housekeeping for the local cluster, turned down: every worker samples its own stack 100
# times a second for the dashboard's profile, its nanny polls memory 10 times a second, and the
# scheduler, each nanny and each worker wake 50 times a second to time their event loop (the tick;
# its log line about an unresponsive loop keeps its 3 s limit). With one worker per core
# that CPU is taken from the molecules: a flow waiting on two tasks of a 2-worker cluster, its Prefect
# server included, used 2.4 CPU-s per 30 s with the default 20 ms tick, 1.3 with 1 s (docs/benchmarks.md).
LOCAL_CLUSTER_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.memory.monitor-interval": "1s",
    "distributed.admin.tick.interval": "1s",
}


def prefect_tasks(retries: int, retry_delay_s: float):
    """A PartRunner whose calls are Prefect tasks on the flow's task runner (Dask), retried by Prefect."""
    def run(name, fn, calls):
        part_task = task(fn, name=name, cache_policy=NO_CACHE, retries=retries, retry_delay_seconds=retry_delay_s)
        for future in as_completed([part_task.submit(*args) for args in calls]):
            yield future.result()
    return run


@flow(name="featurize", log_prints=True)
def featurize_flow(raw: str, out_root: str | None = None, params_file: str = "params.yaml",
                   overrides: list[str] | None = None, progress: bool = False) -> dict:
    params = load_params(Path(params_file), overrides or [])
    try:
        summary, sfp = build_version(Path(raw), Path(out_root) if out_root else params.paths.shards_dir, params,
                                     run=prefect_tasks(params.featurize.task_retries, params.featurize.task_retry_delay_s),
                                     progress=progress)
    except StorageError as exc:  # the run fails with the library's one line, not a logged traceback
        return Failed(message=str(exc), data=exc)
    if sfp is not None:
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
