"""The facts about a run that its outputs must not hold, and paths as outputs record them.

DVC hashes every byte of a stage's outputs. An output that says when it was made, on which machine,
from which absolute directory, how long it took, or how much an earlier run left to reuse differs on
every clone, and `dvc.lock` could never say "reproduced". So outputs hold only what follows from
inputs, params and code, and those facts go to the run log: one JSON line per run in
`<paths.logs_dir>/runs.jsonl` (default `logs/`, ignored by git and never a DVC output). Prefect
records the same runs with their states; the log is the plain-file copy a person can grep.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import platform
import socket
from pathlib import Path

RUN_LOG = "runs.jsonl"
PROJECT_ROOT_ENV = "DEEPMOLM_PROJECT_ROOT"


def project_root() -> Path:
    """The project's directory, where relative paths of params and of what runs record resolve: where
    the pipeline runs (DVC runs every stage there), or, in a job on a Ray cluster, which runs in a
    copy of the project, the project `deepmolm train submit` sent it from (on shared storage)."""
    return Path(os.environ.get(PROJECT_ROOT_ENV) or Path.cwd()).absolute()


def portable_path(path: str | Path, start: str | Path | None = None) -> str:
    """`path` as an output records it: relative to `start`, by default the project root (DVC runs
    every stage there), so two clones record the same string. A
    manifest that points at other data passes its own directory, so the pointer resolves from any
    working directory (a Ray worker's is not the project's). URIs stay as given."""
    text = str(path)
    if "://" in text or not Path(text).is_absolute():
        return text
    return Path(os.path.relpath(text, Path(start).absolute() if start else project_root())).as_posix()


def resolve_recorded(recorded: str, start: str | Path) -> Path:
    """A path a manifest in `start` recorded (relative to it, or absolute from older manifests)."""
    return Path(os.path.normpath(Path(start).absolute() / recorded))


def log_run(logs_dir: Path, kind: str, out: str | Path, **facts) -> dict:
    """Append one run's entry (`kind`: ingest, featurize, train, ...; `out`: what it wrote)."""
    entry = {"kind": kind, "out": str(Path(out).absolute()), "finished_at": dt.datetime.now(dt.UTC).isoformat(),
             "host": socket.gethostname(), "processor": processor(), "cwd": str(Path.cwd()), **facts}
    Path(logs_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(logs_dir) / RUN_LOG, "a", encoding="utf-8") as log:  # one short line: appends do not interleave
        log.write(json.dumps(entry, sort_keys=True, default=str) + "\n")
    return entry


@functools.cache
def processor() -> str:
    """The CPU's model name: what decides the last bits where params.yaml `numerics` does not pin them."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.machine())


def read_runs(logs_dir: Path, kind: str | None = None) -> list[dict]:
    path = Path(logs_dir) / RUN_LOG
    if not path.is_file():
        return []
    runs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in runs if kind is None or r["kind"] == kind]
