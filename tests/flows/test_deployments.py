"""prefect.yaml on a real local Prefect server: the work pool from infra/, `prefect deploy --all`, then
a triggered `refresh-dataset` run picked up by a process worker. It must complete with a new shard
version, its data-quality page, and dvc.lock recording the refreshed stages."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows.local_server import local_prefect_server
from tests.conftest import copy_repository, newcomer_env

# about a minute; in the default run (the deployments are what a scheduled refresh uses)
pytestmark = pytest.mark.slow
ROWS_PER_SPLIT = 4


def prefect(*args: str, cwd: Path, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("prefect")
    result = subprocess.run([str(exe), "--no-prompt", *args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"prefect {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


async def _deployments_and_run(api: str, run_id: str) -> tuple[dict, object]:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}):
        async with get_client() as client:
            deployments = {d.name: d for d in await client.read_deployments()}
            run = await client.read_flow_run(run_id)
    return deployments, run


def test_refresh_dataset_deployment_runs_on_a_process_worker(tmp_path: Path):
    project = copy_repository(tmp_path, rows_per_split=ROWS_PER_SPLIT)
    declared = yaml.safe_load((project / "prefect.yaml").read_text())["deployments"]
    assert {d["name"] for d in declared} == {"refresh-dataset", "train", "evaluate"}

    with local_prefect_server(tmp_path / "prefect") as api:
        env = newcomer_env(PREFECT_API_URL=api, PREFECT_HOME=str(tmp_path / "prefect"))
        env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # the worker's flow run calls dvc by API, deepmolm by name
        prefect("work-pool", "create", "deepmolm-local", "--type", "process",
                "--base-job-template", "infra/prefect/work-pool.json", cwd=project, env=env)
        deployed = prefect("deploy", "--all", cwd=project, env=env)
        assert "refresh-dataset" in deployed.stdout
        triggered = prefect("deployment", "run", "refresh-dataset/refresh-dataset", cwd=project, env=env)
        run_id = next(line.split()[-1] for line in triggered.stdout.splitlines() if "UUID" in line)
        # one polling round: the worker takes the run, executes it in a subprocess and waits for it
        worker = prefect("worker", "start", "--pool", "deepmolm-local", "--run-once", cwd=tmp_path, env=env, timeout=420)
        deployments, run = asyncio.run(_deployments_and_run(api, run_id))

    assert set(deployments) == {"refresh-dataset", "train", "evaluate"}
    schedules = deployments["refresh-dataset"].schedules
    assert [s.schedule.cron for s in schedules] == ["0 3 * * 1"] and schedules[0].active
    assert deployments["train"].parameters["stages"] == [1, 2]
    assert deployments["refresh-dataset"].work_pool_name == "deepmolm-local"
    assert run.state.is_completed(), f"{run.state}\n{worker.stdout[-4000:]}\n{worker.stderr[-4000:]}"

    dataset = project / "data" / "shards" / "chebi20"
    versions = [p for p in dataset.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(versions) == 1 and (dataset / "LATEST").read_text().strip() == versions[0].name
    manifest = json.loads((versions[0] / "manifest.json").read_text())
    assert manifest["counts"]["input_rows"] == 2 * ROWS_PER_SPLIT
    assert (project / "reports" / "data" / "index.html").is_file()
    summary = json.loads((project / "reports" / "data" / "summary.json").read_text())
    assert summary["contract"]["success"] is True and summary["version"] == versions[0].name

    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    outs = {o["path"]: o for o in lock["featurize_chebi20"]["outs"]}
    assert outs["data/shards/chebi20"]["nfiles"] >= 3, "dvc commit recorded the new shard version"
    status = subprocess.run([str(Path(sys.executable).with_name("dvc")), "status", "ingest_chebi20", "featurize_chebi20",
                             "validate_chebi20", "--json"], cwd=project, capture_output=True, text=True, env=env)
    assert status.returncode == 0 and json.loads(status.stdout) == {}, status.stdout + status.stderr
