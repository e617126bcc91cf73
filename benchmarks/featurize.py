"""Featurization: orchestration overhead (flow on 1 worker vs a bare loop) and scaling over workers.

All runs featurize the same ChEBI-20 test molecules with the same params, in this one invocation:
  - bare: one process calls featurize_row on each raw row (conformers in-process, no time limit),
    and, when `mumo.sfp` is on, the SFP graph of each molecule (the flow writes that table too);
  - bare, N processes: the machine's own ceiling for N workers. A pool of N processes, started and
    warmed before the clock, featurizes the flow's parts in the flow's order, each process taking
    the next part when it is free (as a Dask worker does); nothing is written. bare / (N x this)
    is what N busy cores cost each other (shared cache, memory bandwidth) with no Prefect, Dask or
    files, so that the flow's own loss can be told apart from the machine's;
  - flow: `deepmolm data featurize`'s flow (Prefect + a local Dask cluster of N worker processes,
    parts written and hashed, each molecule in the time-limit sandbox), each into a fresh output root
    so nothing is reused. Its CPU is split into the featurization helpers' and the orchestration's
    (everything else in the process tree), since with one worker per core every second of the
    latter is taken from a molecule.
One Prefect API server is started first and shared (as with `prefect server start`), so its start-up
is not counted; the flow's Dask cluster start-up is. The flow's per-molecule time limit is raised
(--time-limit) so that a molecule the flow would give up is not compared with one the loop finishes.
A VM's own speed can move by several percent within a run, which the ratios cannot tell from the
flow's: the same few molecules are timed in this process before each measurement and at the end
(the speed probe), and their spread is printed.
Overhead = flow(1 worker) / bare; efficiency at N workers = time(1) / (N x time(N)).

    python -m benchmarks.featurize [--molecules 400] [--workers 1 2] [--rows-per-part 20]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import tempfile
import time
from pathlib import Path

from deepmolm.config import load_params
from deepmolm.data.featurize.outcome import FeaturizeError
from deepmolm.data.featurize.record import StepTimer, featurize_row
from deepmolm.data.shards.build import plan_version
from deepmolm.data.shards.sfp_table import graph_row
from deepmolm.data.ingest import ingest_tsv
from deepmolm.data.sources.raw_table import read_raw_table
from benchmarks.orchestration import cpu_split
from flows.api import prefect_api, quiet_dask_logs
from flows.featurize import run_featurize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--molecules", type=int, default=400)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rows-per-part", type=int, default=20)
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"))
    parser.add_argument("--time-limit", type=float, default=600,
                        help="per-molecule limit of the flow; high by default so that both sides do the same work")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-featurize-"))
    overrides = [f"paths.raw_dir={tmp / 'raw'}", f"featurize.rows_per_part={args.rows_per_part}",
                 f"featurize.time_limit_s={args.time_limit}"]
    params = load_params("params.yaml", overrides)
    lines = (args.shared / "chebi20" / "test.txt").read_text(encoding="utf-8").splitlines()
    table = tmp / "sample.txt"
    table.write_text("\n".join(lines[: args.molecules + 1]) + "\n", encoding="utf-8")
    raw = ingest_tsv(params, table, progress=False)
    rows = read_raw_table(raw.out).to_pylist()

    probe_rows = rows[:PROBE_MOLECULES]
    featurize_rows(probe_rows[:1], params)  # first-call costs (lazy imports, RDKit's tables) out of every clock
    probes = [speed_probe(probe_rows, params)]
    timer = StepTimer()
    started = time.perf_counter()
    featurize_rows(rows, params, timer)
    bare = time.perf_counter() - started
    print(f"bare loop: {len(rows)} molecules in {bare:.1f} s ({bare / len(rows) * 1000:.0f} ms/molecule)")
    print("  per step (s): " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(timer.seconds.items(), key=lambda kv: -kv[1])))

    parts = [rows[c.start:c.stop] for c in plan_version(Path(raw.out), tmp / "plan-only", params).missing()]
    pool_seconds = {}
    for n in (n for n in args.workers if n > 1):
        probes.append(speed_probe(probe_rows, params))
        pool_seconds[n] = bare_pool(parts, params, n)
    for n, seconds in pool_seconds.items():
        print(f"bare, {n} processes: {seconds:.1f} s, efficiency {bare / (n * seconds):.3f} (the machine's ceiling)")

    quiet_dask_logs()
    flow_seconds: dict[int, float] = {}
    flow_cpu: dict[int, dict[str, float]] = {}
    with prefect_api():
        for workers in args.workers:
            probes.append(speed_probe(probe_rows, params))
            started = time.perf_counter()
            with cpu_split() as cpu:
                summary = run_featurize(Path(raw.out), tmp / f"shards-{workers}", Path("params.yaml"), overrides,
                                        workers=workers, progress=False)
            flow_seconds[workers] = time.perf_counter() - started
            flow_cpu[workers] = cpu
            assert summary["input_rows"] == len(rows) and summary["reused"] == 0
            print(f"flow, {workers} worker(s): {flow_seconds[workers]:.1f} s "
                  f"(in-flow {summary['seconds']:.1f} s), {summary['accepted']} accepted + {summary['rejected']} rejected")
            print(f"  CPU: featurization helpers {cpu['helpers']:.1f} s, orchestration {cpu['orchestration']:.1f} s "
                  f"(Prefect server and engine, Dask, the parts' writes and SFP table); "
                  f"the {os.cpu_count()} cores had {os.cpu_count() * flow_seconds[workers]:.1f} s")

    probes.append(speed_probe(probe_rows, params))
    drift = max(probes) / min(probes) - 1
    print(f"speed probe ({len(probe_rows)} molecules, one process) before each measurement and at the end: "
          + ", ".join(f"{p:.2f}" for p in probes) + f" s, spread {drift:.1%}")
    if drift > PROBE_SPREAD_WARNING:
        print(f"  the machine's own speed moved by more than {PROBE_SPREAD_WARNING:.0%} during this run: "
              "the ratios below carry that drift")
    # The same molecules' kernels: with two workers the cores slow each other, so a ratio under 1
    # says the machine was faster during the two-worker run, or the one-worker run paid extra.
    helpers_2_over_1 = flow_cpu[2]["helpers"] / flow_cpu[1]["helpers"] if {1, 2} <= flow_cpu.keys() else None
    if helpers_2_over_1 is not None:
        print(f"  featurization helpers' CPU, 2 workers / 1 worker: {helpers_2_over_1:.3f}")

    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "molecules": len(rows), "bare_s": round(bare, 2),
              "speed_probe_s": [round(p, 2) for p in probes], "speed_spread": round(drift, 3)}
    for n, seconds in pool_seconds.items():
        result[f"bare_efficiency_{n}"] = round(bare / (n * seconds), 3)
    if 1 in flow_seconds:
        result["overhead_ratio"] = round(flow_seconds[1] / bare, 3)
        print(f"overhead ratio (flow on 1 worker / bare loop): {result['overhead_ratio']:.3f}  (issue 20: <= 1.05)")
        for workers, seconds in flow_seconds.items():
            efficiency = flow_seconds[1] / (workers * seconds)
            result[f"efficiency_{workers}"] = round(efficiency, 3)
            result[f"orchestration_cpu_s_{workers}"] = round(flow_cpu[workers]["orchestration"], 1)
            print(f"parallel efficiency at {workers} workers: {efficiency:.3f}  "
                  f"({len(rows) / seconds:.2f} molecules/s)")
    if helpers_2_over_1 is not None:
        result["helpers_cpu_2_over_1"] = round(helpers_2_over_1, 3)
    print(json.dumps(result))


PROBE_MOLECULES = 30  # the benchmark's first molecules: about 6 s in one process
# Ten probes back to back on the idle VM spread by 6.3% (6.18-6.57 s, 2026-12-03): only a wider
# spread says more about the machine than about the probe.
PROBE_SPREAD_WARNING = 0.08


def speed_probe(rows: list[dict], params) -> float:
    """Seconds for this process to featurize the same few molecules: how fast the machine is now."""
    started = time.perf_counter()
    featurize_rows(rows, params)
    return time.perf_counter() - started


def featurize_rows(rows: list[dict], params, timer: StepTimer | None = None) -> int:
    """What the flow computes per molecule: the record, and the SFP graph when `mumo.sfp` is on."""
    timer = timer if timer is not None else StepTimer()
    for row in rows:
        record = featurize_row(row, params.featurize, timer=timer)
        if params.mumo.sfp and isinstance(record, dict):
            with timer.step("sfp"), contextlib.suppress(FeaturizeError):
                graph_row(record["cid"], record["smiles"], record["coords"])
    return len(rows)


def bare_pool(parts: list[list[dict]], params, processes: int) -> float:
    """Seconds for `processes` warmed processes to featurize the parts, each taking the next when free."""
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(processes + 1)
    with context.Pool(processes, initializer=_warmed, initargs=(parts[-1][:1], params, ready)) as pool:
        ready.wait()  # every process has imported and featurized a first molecule
        started = time.perf_counter()
        done = sum(pool.starmap(featurize_rows, [(part, params) for part in parts], chunksize=1))
        seconds = time.perf_counter() - started
    assert done == sum(len(part) for part in parts)
    return seconds


def _warmed(rows: list[dict], params, ready) -> None:
    featurize_rows(rows, params)
    ready.wait()


if __name__ == "__main__":
    main()
