"""Where a command's CPU goes, by kind of process: Ray's daemons and workers, Prefect servers, Dask,
DVC, each `deepmolm` subcommand, the pytest workers themselves.

`python -m benchmarks.process_cpu [--json OUT] -- COMMAND ...` runs COMMAND and, every half second,
reads the CPU time of every process started since (on the whole machine: run it alone), so the
processes that Ray, Dask or Prefect start and that outlive their parent count too. It prints CPU
seconds per kind, the share of each, and the machine's busy share over the run (cores x wall): a
CPU-bound suite only gets faster by doing less, a waiting one by doing more at once. A process that
lives between two readings is missed, and each one's CPU after its last reading: the table counts
what it saw beside the machine's busy time (/proc/stat), which misses nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import psutil

# (kind, a piece of the command line), first match wins; a `deepmolm` process is named by its subcommand
KINDS = [("this sampler (its readings)", "benchmarks.process_cpu"),
         ("ray: train workers and helper actors", "default_worker.py"), ("ray: raylet", "raylet/raylet"),
         ("ray: gcs", "gcs_server"), ("ray: dashboard and agents", "dashboard/"),
         ("ray: dashboard and agents", "ray-dashboard-"),
         ("ray: runtime-env agent", "runtime_env/agent"), ("ray: log monitor", "log_monitor.py"),
         ("ray: autoscaler monitor", "autoscaler/_private/monitor.py"), ("ray: other", "ray::"),
         ("prefect server", "prefect server start"), ("prefect server", "uvicorn"),
         ("prefect: other", "prefect"), ("dask", "distributed"), ("dask", "-B -c from multiprocessing"),
         ("featurize sandbox", "deepmolm.data.featurize.sandbox"), ("dvc", "dvc"),
         ("pytest (tests in its own processes)", "sys.stdin.readline"),  # an xdist worker
         ("pytest (tests in its own processes)", "pytest"),
         ("chromium", "chrom"), ("git", "git"), ("compilers (a JIT-built extension)", "cc1plus")]


def kind_of(cmdline: list[str]) -> str:
    cli = next((i for i, part in enumerate(cmdline[:3]) if Path(part).name == "deepmolm"), None)
    if cli is not None:
        words = []
        for word in cmdline[cli + 1:cli + 3]:  # the subcommand: the words before the first option or path
            if word.startswith("-") or "/" in word:
                break
            words.append(word)
        return " ".join(["deepmolm", *words])
    joined = " ".join(cmdline)
    return next((kind for kind, piece in KINDS if piece in joined), f"other: {Path(cmdline[0]).name}" if cmdline else "other")


def sample(since: float, seen: dict) -> None:
    for process in psutil.process_iter(["pid", "create_time", "cmdline", "cpu_times"]):
        info = process.info
        if info["create_time"] is None or info["create_time"] < since or info["cpu_times"] is None:
            continue
        key = (info["pid"], info["create_time"])
        cpu = info["cpu_times"].user + info["cpu_times"].system
        if key not in seen:
            seen[key] = [kind_of(info["cmdline"] or []), cpu]
        else:
            seen[key][1] = max(seen[key][1], cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None, help="also write the table here")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between readings [0.5]")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the command to run")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --")
    busy_before, started = psutil.cpu_times(), time.time()
    seen: dict = {}
    with subprocess.Popen(command) as child:
        while child.poll() is None:
            sample(started - 1, seen)
            time.sleep(args.interval)
    wall = time.time() - started
    busy_after = psutil.cpu_times()
    busy = sum(getattr(busy_after, f) - getattr(busy_before, f) for f in ("user", "nice", "system", "irq", "softirq"))
    by_kind: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for kind, cpu in seen.values():
        by_kind[kind][0] += cpu
        by_kind[kind][1] += 1
    counted = sum(cpu for cpu, _ in by_kind.values())
    rows = [{"kind": kind, "processes": n, "cpu_s": round(cpu, 1), "share": round(cpu / counted, 3) if counted else 0}
            for kind, (cpu, n) in sorted(by_kind.items(), key=lambda item: -item[1][0])]
    cores = os.cpu_count() or 1
    summary = {"command": command, "exit_code": child.returncode, "wall_s": round(wall, 1), "cores": cores,
               "machine_busy_cpu_s": round(busy, 1), "machine_busy_share": round(busy / (cores * wall), 3),
               "counted_cpu_s": round(counted, 1), "kinds": rows}
    print(f"{'kind':44s} {'processes':>9s} {'CPU s':>8s} {'share':>6s}")
    for row in rows:
        print(f"{row['kind'][:44]:44s} {row['processes']:9d} {row['cpu_s']:8.1f} {row['share']:6.1%}")
    print(f"wall {wall:.1f} s on {cores} cores; the machine busy {busy:.1f} CPU-s ({summary['machine_busy_share']:.0%}); "
          f"counted in the command's processes {counted:.1f} CPU-s")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    sys.exit(child.returncode)


if __name__ == "__main__":
    main()
