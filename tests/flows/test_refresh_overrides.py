"""A refresh with overrides never records its outputs in dvc.lock under params they were not made
with: `deepmolm data refresh -S ...` on a fresh clone, as the deployment's `overrides` parameter
runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from deepmolm.data.refresh_commit import SOURCE_STAGES, commit_plan
from tests.conftest import copy_repository, run_cli

pytestmark = pytest.mark.slow  # a refresh of 6 molecules: about a minute
STAGES = [f"{step}_chebi20" for step in SOURCE_STAGES]


def test_overrides_of_the_stages_params_are_refused_a_commit_and_others_are_not(tmp_path: Path):
    project = copy_repository(tmp_path, rows_per_split=3)
    lock = (project / "dvc.lock").read_text()
    refreshed = run_cli("data", "refresh", "-S", "sources.chebi20.max_rows_per_split=2", "--json", cwd=project)
    assert refreshed.returncode == 0, refreshed.stderr[-3000:]
    summary = json.loads(refreshed.stdout.strip().splitlines()[-1])
    assert summary["dvc_committed"] == [] and summary["sources"]["chebi20"]["accepted"] + \
        summary["sources"]["chebi20"]["rejected"] == 2 * 2, "the refresh itself ran, with the override"
    refused = summary["dvc_commit_refused"]
    assert "change sources.chebi20, params of ingest_chebi20" in refused and "params.yaml" in refused, refused
    assert refused in refreshed.stderr, "said where a person running it reads"
    assert (project / "dvc.lock").read_text() == lock, "dvc.lock untouched"
    status = subprocess.run([str(Path(sys.executable).with_name("dvc")), "status", *STAGES, "--json"], cwd=project,
                            capture_output=True, text=True)
    assert "ingest_chebi20" in json.loads(status.stdout), "dvc sees outputs params.yaml does not describe"

    params_file = project / "params.yaml"
    for harmless in (["featurize.dask.workers=1"], ["recipe=gpu_small"], ["sources.chebi20.max_rows_per_split=3"]):
        assert commit_plan(project, params_file, harmless, ["chebi20"]) == (STAGES, None), harmless  # same params as filed
    assert "featurize.conformer" in commit_plan(project, params_file, ["featurize.conformer.seed=7"], ["chebi20"])[1]
