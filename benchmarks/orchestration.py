"""What the featurize flow's orchestration costs while its workers are busy elsewhere: the CPU of a
flow waiting on two sleeping tasks of a 2-worker local cluster (the flow's own task runner and
LOCAL_CLUSTER_CONFIG), its temporary Prefect server included, with Dask's default 20 ms event-loop
tick and with the flow's 1 s tick. On a machine with one worker per core every such CPU second is
taken from a molecule.

    python -m benchmarks.orchestration [--seconds 30]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import dask
import psutil
from prefect import flow, task

from deepmolm.config import load_params
from flows.api import prefect_api, quiet_dask_logs
from flows.featurize import LOCAL_CLUSTER_CONFIG, task_runner

TICKS = {"Dask's default tick (20 ms)": "20ms", "the flow's tick (LOCAL_CLUSTER_CONFIG)":
         LOCAL_CLUSTER_CONFIG["distributed.admin.tick.interval"]}


@task
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def tree_cpu_seconds() -> dict[int, float]:
    """CPU seconds so far of this process and every process under it (the server, nannies' workers, helpers)."""
    spent = {}
    for process in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        spent[process.pid] = times.user + times.system
    return spent


@flow
def waiting_flow(seconds: float) -> float:
    """CPU seconds the whole tree spends while the flow's two tasks sleep `seconds`."""
    for future in [nap.submit(1), nap.submit(1)]:  # the cluster and both workers up before the clock
        future.result()
    before = tree_cpu_seconds()
    for future in [nap.submit(seconds), nap.submit(seconds)]:
        future.result()
    after = tree_cpu_seconds()
    return sum(spent - before.get(pid, 0.0) for pid, spent in after.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    runner = task_runner(load_params(Path("params.yaml"), []).featurize.dask, workers=2)
    quiet_dask_logs()
    spent = {}
    with prefect_api():
        for name, tick in TICKS.items():
            with dask.config.set({**LOCAL_CLUSTER_CONFIG, "distributed.admin.tick.interval": tick}):
                spent[name] = waiting_flow.with_options(task_runner=runner)(args.seconds)
            print(f"{name}: {spent[name]:.2f} CPU-s while the flow waited {args.seconds:g} s")
    default, ours = spent.values()
    print(f"ratio (the flow's tick / the default): {ours / default:.2f}")
    print(json.dumps({"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                      "seconds": args.seconds, "cpu_s_default_tick": round(default, 2),
                      "cpu_s_flow_tick": round(ours, 2), "ratio": round(ours / default, 2)}))


if __name__ == "__main__":
    main()
