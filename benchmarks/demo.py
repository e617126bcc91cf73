"""The README's first command from a fresh clone, timed stage by stage.

`python -m benchmarks.demo [--rows N]` clones this repository (its last commit) into a temporary
directory with ../shared beside it, runs `./dev demo` on the current environment (no install) and
then a second, no-op `dvc repro`. It prints, per DVC stage, the wall time from DVC starting the stage
to the next one, the time inside the stage's Prefect flow run (Prefect's own timestamps), and what
surrounds it (process start, imports, DVC hashing): the orchestration share. Ratios, not targets:
the issue's bounds are 10 minutes for the demo and 15 s for the no-op repro.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DEEPMOLM_SHARED", REPO.parent / "shared")).resolve()
FLOW_LINE = re.compile(r"^(\d\d:\d\d:\d\d\.\d+) \| INFO +\| Flow run '([^']+)' - (Beginning flow run|Finished in state)")


def clone(dest: Path, rows: int | None) -> Path:
    project = dest / "main"
    subprocess.run(["git", "clone", "-q", str(REPO), str(project)], check=True)
    (dest / "shared").symlink_to(SHARED)
    if rows is not None:
        params = project / "params.yaml"
        params.write_text(re.sub(r"max_rows_per_split: \d+", f"max_rows_per_split: {rows}", params.read_text()))
    return project


def timed_demo(project: Path) -> tuple[float, list[dict], str]:
    env = {**os.environ, "DEEPMOLM_VENV": sys.prefix, "DEEPMOLM_NO_INSTALL": "1", "PYTHONPATH": str(project)}
    env.pop("PREFECT_API_URL", None)
    started = time.perf_counter()
    stages, lines = [], []
    with subprocess.Popen(["./dev", "demo"], cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as demo:
        for line in demo.stdout:
            lines.append(line)
            now = time.perf_counter() - started
            if match := re.match(r"Running stage '([^']+)'", line):
                stages.append({"stage": match.group(1), "start_s": now})
            elif (match := FLOW_LINE.match(line)) and stages:
                clock = datetime.strptime(match.group(1), "%H:%M:%S.%f")
                if match.group(3).startswith("Beginning"):
                    stages[-1].setdefault("flow_begin", clock)  # the stage's first flow run ...
                else:
                    stages[-1]["flow_end"] = clock  # ... to the last one's end
    total = time.perf_counter() - started
    if demo.returncode != 0:
        raise SystemExit("".join(lines[-60:]) + f"\n./dev demo exited {demo.returncode}")
    for this, following in zip(stages, [*stages[1:], None]):
        this["wall_s"] = round((following["start_s"] if following else total) - this["start_s"], 1)
        begin, end = this.pop("flow_begin", None), this.pop("flow_end", None)
        this["flow_s"] = round((end - begin).total_seconds(), 1) if begin and end else None
        this["start_s"] = round(this["start_s"], 1)
    return total, stages, "".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=None, help="molecules per ChEBI-20 split [default: params.yaml's]")
    parser.add_argument("--keep", type=Path, default=None, help="clone into this (new) directory and keep it, dvc.lock and outputs included")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="deepmolm-demo-") as tmp:
        where = Path(tmp) if args.keep is None else args.keep
        where.mkdir(parents=True, exist_ok=args.keep is None)
        project = clone(where, args.rows)
        total, stages, _ = timed_demo(project)
        dvc = Path(sys.executable).with_name("dvc")
        started = time.perf_counter()
        noop = subprocess.run([str(dvc), "repro"], cwd=project, capture_output=True, text=True, check=True)
        noop_s = time.perf_counter() - started
        assert "Running stage" not in noop.stdout, noop.stdout
    in_flows = sum(s["flow_s"] or 0 for s in stages)
    print(f"{'stage':<22}{'wall s':>9}{'flow s':>9}")
    for s in stages:
        print(f"{s['stage']:<22}{s['wall_s']:>9}{s['flow_s'] if s['flow_s'] is not None else '-':>9}")
    result = {"demo_s": round(total, 1), "inside_flows_s": round(in_flows, 1),
              "orchestration_share": round(1 - in_flows / total, 3), "noop_repro_s": round(noop_s, 2),
              "noop_over_demo": round(noop_s / total, 4), "stages": stages}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
