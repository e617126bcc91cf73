"""prefect.yaml on a real local Prefect server: the work pool from infra/, `prefect deploy --all` with
the shipped weekly cron and, beside it, a schedule due within seconds, then the server's scheduler
creates a `refresh-dataset` run from the deployment's schedules and a process worker runs it when it
is due. It must complete with a new
shard version, its data-quality page, and dvc.lock recording the refreshed stages; the server's log
must hold no scheduler error."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from flows.local_server import local_prefect_server
from tests.conftest import copy_repository, newcomer_env

# about half a minute; in the default run (the deployments are what a scheduled refresh uses)
pytestmark = pytest.mark.slow
ROWS_PER_SPLIT = 4


def prefect(*args: str, cwd: Path, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("prefect")
    result = subprocess.run([str(exe), "--no-prompt", *args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"prefect {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


SHIPPED = '- cron: "0 3 * * 1"      # Mondays, 03:00 UTC\n        timezone: UTC\n        active: true\n'
# a second entry beside the shipped one: a run due within 15 s of the deployment, not the next minute's
SOON = SHIPPED + "      - interval: 15\n        active: true\n"


async def _client_call(api: str, call):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}):
        async with get_client() as client:
            return await call(client)


async def _scheduled_runs(client) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    runs = await client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["refresh-dataset"])))
    return sorted((r for r in runs if r.state and r.state.is_scheduled()), key=lambda r: r.expected_start_time)


def _first_scheduled_run(api: str, timeout_s: float = 90):
    """The earliest run the server's scheduler created for refresh-dataset (it runs every 5 s here)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if runs := asyncio.run(_client_call(api, _scheduled_runs)):
            return runs[0]
        time.sleep(2)
    raise AssertionError(f"the scheduler created no run of refresh-dataset within {timeout_s} s")


def test_refresh_dataset_deployment_runs_on_schedule_on_a_process_worker(tmp_path: Path, monkeypatch):
    project = copy_repository(tmp_path, rows_per_split=ROWS_PER_SPLIT)
    declared = yaml.safe_load((project / "prefect.yaml").read_text())["deployments"]
    assert {d["name"] for d in declared} == {"refresh-dataset", "train", "evaluate"}
    assert [s["cron"] for s in declared[0]["schedules"]] == ["0 3 * * 1"], "the weekly refresh the project ships"
    text = (project / "prefect.yaml").read_text()
    assert text.count(SHIPPED) == 1
    (project / "prefect.yaml").write_text(text.replace(SHIPPED, SOON))
    monkeypatch.setenv("PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS", "5")  # the server's scheduler, not 60 s
    monkeypatch.setenv("PREFECT_SERVER_SERVICES_SCHEDULER_MAX_RUNS", "3")  # of the 15-s schedule: not 100 ahead

    with local_prefect_server(tmp_path / "prefect") as api:
        env = newcomer_env(PREFECT_API_URL=api, PREFECT_HOME=str(tmp_path / "prefect"))
        env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # the worker's flow run calls dvc by API, deepmolm by name
        prefect("work-pool", "create", "deepmolm-local", "--type", "process",
                "--base-job-template", "infra/prefect/work-pool.json", cwd=project, env=env)
        deploying = datetime.now(timezone.utc)
        deployed = prefect("deploy", "--all", cwd=project, env=env)
        assert "refresh-dataset" in deployed.stdout
        scheduled = _first_scheduled_run(api)
        # one polling round once it is due: the worker takes it, executes it in a subprocess and waits
        time.sleep(max(0.0, (scheduled.expected_start_time - datetime.now(timezone.utc)).total_seconds()))
        worker = prefect("worker", "start", "--pool", "deepmolm-local", "--run-once", cwd=tmp_path, env=env, timeout=420)
        run = asyncio.run(_client_call(api, lambda client: client.read_flow_run(scheduled.id)))
        deployments = {d.name: d for d in asyncio.run(_client_call(api, lambda client: client.read_deployments()))}
    server_log = (tmp_path / "prefect" / "server.log").read_text(errors="replace")
    scheduler_errors = [line for line in server_log.splitlines() if "ERROR" in line and "schedul" in line]
    assert not scheduler_errors and "InvalidRequestError" not in server_log, server_log[-3000:]

    assert set(deployments) == {"refresh-dataset", "train", "evaluate"}
    schedules = deployments["refresh-dataset"].schedules
    shipped, soon = sorted(schedules, key=lambda s: hasattr(s.schedule, "interval"))
    assert (shipped.schedule.cron, shipped.schedule.timezone, shipped.active) == ("0 3 * * 1", "UTC", True)
    assert soon.schedule.interval.total_seconds() == 15
    assert run.expected_start_time - deploying < timedelta(seconds=15 + 30), "the run is the 15-s schedule's"
    assert run.auto_scheduled and run.deployment_id == deployments["refresh-dataset"].id
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
