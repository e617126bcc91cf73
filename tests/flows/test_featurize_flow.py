"""The featurize flow as a user runs it: `deepmolm data featurize`, Prefect, real Dask processes.

One clean run is the reference; every other way of getting the same version (an existing scheduler,
a run killed and started again, a run that loses a worker) must end with the same part bytes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from deepmolm.config import load_params
from deepmolm.data.ingest import ingest_tsv
from deepmolm.data.shards.parts import read_manifest
from tests.conftest import PARAMS, REPO, tmp_overrides
from tests.featurize_inputs import BAD_ROWS, small_chebi20_rows, write_table

pytestmark = pytest.mark.slow
PART_ROWS = "featurize.rows_per_part=3"


def featurize_command(raw: Path, out: Path, tmp: Path, *extra: str) -> list[str]:
    overrides = [a for o in tmp_overrides(tmp) for a in ("-S", o)]
    exe = Path(sys.executable).with_name("deepmolm")
    return [str(exe), "data", "featurize", "--input", str(raw), "--out", str(out), "-S", PART_ROWS,
            *overrides, "--json", "--quiet", *extra]


def run_featurize(raw: Path, out: Path, tmp: Path, *extra: str, env: dict | None = None) -> dict:
    result = subprocess.run(featurize_command(raw, out, tmp, *extra), cwd=REPO, capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def part_sums(summary: dict) -> list[str]:
    return [p["sha256"] for p in read_manifest(summary["out"])["parts"]]


@pytest.fixture(scope="module")
def work(tmp_path_factory, shared):
    tmp = tmp_path_factory.mktemp("featurize-flow")
    params = load_params(PARAMS, tmp_overrides(tmp))
    raw = ingest_tsv(params, write_table(tmp / "in.txt", small_chebi20_rows(shared, 18)), progress=False)
    reference = run_featurize(Path(raw.out), tmp / "reference", tmp, "--workers", "2")
    return tmp, Path(raw.out), reference


def test_clean_run_accounts_for_every_row(work):
    tmp, raw, reference = work
    assert (reference["input_rows"], reference["accepted"], reference["rejected"]) == (21, 18, 3)
    assert reference["rejected_by_reason"] == {reason: 1 for _, reason in BAD_ROWS.values()}
    assert reference["parts"] == 7 and reference["seconds"] > 0
    assert Path(reference["out"]) == tmp / "reference" / "tsv" / reference["version"]
    assert not list((tmp / "reference" / "tsv").glob(".building-*")), "the staging directory was published"
    sfp = json.loads((Path(reference["out"]) / "sfp" / "manifest.json").read_text())  # mumo.sfp is on
    assert sfp["counts"] == {"molecules": 18, "graphs": 18, "rejected": 0}


def test_existing_scheduler_gives_the_same_bytes(work):
    tmp, raw, reference = work
    scheduler_file = tmp / "scheduler.json"
    bin_dir = Path(sys.executable).parent
    scheduler = subprocess.Popen([str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                                  "--no-dashboard", "--scheduler-file", str(scheduler_file)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = None
    try:
        for _ in range(200):
            if scheduler_file.exists() and scheduler_file.stat().st_size:
                break
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        worker = subprocess.Popen([str(bin_dir / "dask"), "worker", address, "--nworkers", "1", "--nthreads", "1",
                                   "--no-dashboard"], cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        env = {**os.environ, "DEEPMOLM_DASK_SCHEDULER": address}
        summary = run_featurize(raw, tmp / "external", tmp, env=env)
    finally:
        for process in (worker, scheduler):
            if process is not None:
                process.terminate()
                process.wait(timeout=30)
    assert summary["version"] == reference["version"]
    assert part_sums(summary) == part_sums(reference)


def _wait_for_marker(out: Path, process: subprocess.Popen) -> None:
    """Until the run has finished a part: on a loaded machine its start alone (a temporary Prefect
    API, a Dask cluster) took over 120 s; a run that ends first fails at once."""
    deadline = time.monotonic() + 360
    while time.monotonic() < deadline:
        if list(out.glob("tsv/.building-*/part-*.json")):
            return
        assert process.poll() is None, "the run ended before any part was written"
        time.sleep(0.05)
    raise AssertionError("no part was finished within 360 s")


def _kill_tree(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


def test_run_killed_with_sigkill_resumes_to_the_same_bytes(work):
    tmp, raw, reference = work
    out = tmp / "killed"
    process = subprocess.Popen(featurize_command(raw, out, tmp, "--workers", "1"), cwd=REPO, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_marker(out, process)
        process.kill()  # kill -9 of the flow process, then of whatever it left running
    finally:
        _kill_tree(process)
    summary = run_featurize(raw, out, tmp, "--workers", "2")
    assert 1 <= summary["resumed_parts"] <= summary["parts"]
    assert (summary["accepted"], summary["rejected"]) == (reference["accepted"], reference["rejected"])
    assert part_sums(summary) == part_sums(reference)


def test_losing_a_worker_process_still_completes_with_the_same_bytes(work):
    tmp, raw, reference = work
    out = tmp / "lost-worker"
    process = subprocess.Popen(featurize_command(raw, out, tmp, "--workers", "2"), cwd=REPO, start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_marker(out, process)
        workers = [p for p in psutil.Process(process.pid).children(recursive=True)
                   if "spawn_main" in " ".join(p.cmdline())]
        assert workers, "no Dask worker process found"
        workers[0].kill()
        stdout, stderr = process.communicate(timeout=300)
    finally:
        _kill_tree(process)
    assert process.returncode == 0, stderr[-3000:]
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["input_rows"] == reference["input_rows"]
    assert part_sums(summary) == part_sums(reference)
