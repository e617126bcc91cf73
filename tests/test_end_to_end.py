"""The README's first command on a copy of the repository: `./dev demo` runs `dvc repro` (ingest, then
featurize on a local Dask cluster, validate with the data contracts, each a Prefect flow on a temporary
local API, then the instruction examples) on the first rows of each ChEBI-20 split; a second run has
nothing to do."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, SHARED, run_cli

pytestmark = pytest.mark.slow
ROWS_PER_SPLIT = 12


def _git_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True)
    return [line for line in listed.stdout.splitlines() if (REPO / line).is_file()]


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "main"
    for name in _git_files():
        target = copy / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)
    (tmp_path / "shared").symlink_to(SHARED)
    params = copy / "params.yaml"
    text = params.read_text()
    assert "max_rows_per_split: null" in text
    params.write_text(text.replace("max_rows_per_split: null", f"max_rows_per_split: {ROWS_PER_SPLIT}"))
    subprocess.run(["git", "init", "-q"], cwd=copy, check=True)
    return copy


def test_dev_demo_runs_dvc_repro_through_prefect_and_is_then_up_to_date(repo_copy: Path):
    # ./dev uses the test's own environment as it is (an install from the copy would re-point its
    # editable package there); the PATH is a newcomer's, without the environment on it.
    venv = Path(sys.prefix)
    path = ":".join(p for p in os.environ["PATH"].split(":") if not p.startswith(str(venv)))
    env = {**os.environ, "DEEPMOLM_VENV": str(venv), "DEEPMOLM_NO_INSTALL": "1", "PATH": path}
    first = subprocess.run(["./dev", "demo"], cwd=repo_copy, capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Flow run" in first.stdout + first.stderr, "the stage ran as a Prefect flow"
    raw, shards, contract, instructions = [json.loads(ln) for ln in first.stdout.splitlines() if ln.startswith("{")][-4:]
    rows = 2 * ROWS_PER_SPLIT
    assert (raw["input_rows"], raw["accepted"], raw["rejected"]) == (rows, rows, 0)
    assert Path(raw["out"]).parent == repo_copy / "data" / "raw" / "chebi20"
    assert shards["input_rows"] == rows and shards["accepted"] + shards["rejected"] == rows
    assert Path(shards["out"]).parent == repo_copy / "data" / "shards" / "chebi20"
    assert f"{rows} input = {rows} accepted + 0 rejected" in first.stdout
    assert contract["success"] is True and contract["failed"] == [] and contract["target"] == shards["out"]
    assert (repo_copy / "reports" / "data" / "index.html").is_file()
    metrics = json.loads((repo_copy / "reports" / "data" / "summary.json").read_text())
    assert metrics["counts"]["accepted"] == shards["accepted"] and metrics["contract"]["success"] is True
    assert instructions["shard_version"] == shards["version"] and instructions["contract"]["success"] is True
    assert instructions["examples_by_task"]["caption"] == shards["accepted"]

    second = subprocess.run(["./dev", "demo"], cwd=repo_copy, capture_output=True, text=True, env=env, timeout=600)
    assert second.returncode == 0
    assert "didn't change, skipping" in second.stdout

    shown = run_cli("data", "summary", str(repo_copy / "data" / "raw" / "chebi20"), "--json", check=True)
    assert json.loads(shown.stdout.splitlines()[-1])["snapshot"] == raw["snapshot"]
    shown = run_cli("data", "summary", str(repo_copy / "data" / "shards" / "chebi20"), "--json", check=True)
    assert json.loads(shown.stdout.splitlines()[-1])["version"] == shards["version"]
