"""What the featurize flow's orchestration costs while its workers are busy elsewhere: the CPU of a
flow waiting on two sleeping tasks of a 2-worker local cluster (the flow's own task runner and
LOCAL_CLUSTER_CONFIG), its temporary Prefect server included, with Dask's default 20 ms event-loop
tick and with the flow's 1 s tick. On a machine with one worker per core every such CPU second is
taken from a molecule.

    python -m benchmarks.orchestration [--seconds 30]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dask
import psutil
from prefect import flow, task

from deepmolm.config import load_params
from deepmolm.data.featurize import sandbox
from flows.api import prefect_api, quiet_dask_logs
from flows.featurize import LOCAL_CLUSTER_CONFIG, task_runner

TICKS = {"Dask's default tick (20 ms)": "20ms", "the flow's tick (LOCAL_CLUSTER_CONFIG)":
         LOCAL_CLUSTER_CONFIG["distributed.admin.tick.interval"]}


@task
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


HELPER_MODULE = sandbox.__name__  # the featurization helper runs as `python -m` of it


def tree_cpu_seconds(helpers: dict[int, bool] | None = None) -> dict[int, tuple[float, bool]]:
    """CPU seconds so far of this process and every process under it (the server, nannies' workers,
    helpers), and whether each is a featurization helper (`helpers` caches that per pid)."""
    helpers = {} if helpers is None else helpers
    spent = {}
    for process in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            times = process.cpu_times()
            if process.pid not in helpers:
                helpers[process.pid] = HELPER_MODULE in process.cmdline()
        except psutil.Error:
            continue
        spent[process.pid] = (times.user + times.system, helpers[process.pid])
    return spent


@contextlib.contextmanager
def cpu_split(every_s: float = 1.0) -> Iterator[dict[str, float]]:
    """CPU seconds the tree spends in the block, as {"helpers": ..., "orchestration": ...}: the
    featurization helpers' molecules, and everything else (Prefect server and engine, Dask scheduler,
    nannies and workers, the parts' writes). Processes that end inside the block (a cluster's workers)
    are sampled every `every_s` and counted up to their last sample; the sampling's own CPU is not
    counted."""
    helpers: dict[int, bool] = {}
    before = tree_cpu_seconds(helpers)
    last, stop, own = dict(before), threading.Event(), [0.0]

    def sample() -> None:
        while not stop.wait(every_s):
            last.update(tree_cpu_seconds(helpers))
            own[0] = time.thread_time()

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    split = {"helpers": 0.0, "orchestration": 0.0}
    try:
        yield split
    finally:
        stop.set()
        sampler.join()
        last.update(tree_cpu_seconds(helpers))
        for pid, (seconds, helper) in last.items():
            split["helpers" if helper else "orchestration"] += seconds - before.get(pid, (0.0, helper))[0]
        split["orchestration"] -= own[0]


@flow
def waiting_flow(seconds: float) -> float:
    """CPU seconds the whole tree spends while the flow's two tasks sleep `seconds`."""
    for future in [nap.submit(1), nap.submit(1)]:  # the cluster and both workers up before the clock
        future.result()
    with cpu_split() as spent:
        for future in [nap.submit(seconds), nap.submit(seconds)]:
            future.result()
    return sum(spent.values())


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
