"""`deepmolm train submit`: the same training command, as a job on an existing Ray cluster.

The job goes through the Ray Jobs API (the dashboard's port, 8265 by default). Its runtime_env
carries this project's directory as the working_dir (data, models, runs and the virtual environment
left out: on a cluster they live on shared storage named in params) and, with
`train.cluster.install_packages`, the locked requirements as its pip packages. The entrypoint is
`python -m deepmolm train run` with the same params file and overrides, so the cluster runs exactly
what `deepmolm train run` runs here. Logs are streamed until the job ends; its status is returned.

The job runs in a copy of the project, so a relative path of params (the defaults: data/..., models/,
runs/) would point into that copy, where the data is not. The job is told where the project itself
is (DEEPMOLM_PROJECT_ROOT, runtime/run_log.project_root) and reads and writes there: on a cluster
that shares this filesystem the README's command works with the default params, and what the job
records (provenance, logs) is relative to the project, as a local run records it. Where the
project is not on the cluster's nodes, the job stops naming each relative path param.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import uuid
from collections.abc import Callable
from pathlib import Path

from deepmolm.config import ClusterParams, ConfigError
from deepmolm.runtime.run_log import PROJECT_ROOT_ENV

LOCK_FILE = Path("requirements/lock.txt")


def job_entrypoint(stage: int, params_file: str, overrides: list[str]) -> str:
    command = ["python", "-m", "deepmolm", "train", "run", "--stage", str(stage), "--params", params_file]
    for override in overrides:
        command += ["-S", override]
    return shlex.join(command)


def runtime_env(project: Path, cluster: ClusterParams) -> dict:
    env: dict = {"working_dir": str(project), "excludes": list(cluster.excludes)}
    if cluster.install_packages:
        lines = (project / LOCK_FILE).read_text().splitlines()
        env["pip"] = {"packages": [line for line in lines if line and not line.startswith("#")], "pip_check": False}
    env["env_vars"] = {PROJECT_ROOT_ENV: str(project.absolute()), **cluster.env_vars}
    return env


def submit_training(address: str, stage: int, project: Path, params_file: str, overrides: list[str],
                    cluster: ClusterParams, *, wait: bool = True, log: Callable[[str], None] = print) -> dict:
    """Submit, then (with `wait`) stream the logs and return the final status."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    try:
        client = JobSubmissionClient(address, headers=auth_headers())
    except ConnectionError as exc:  # a host that does not resolve, a port nobody listens on
        raise ConfigError(f"--address {address}: no Ray Jobs API answers there ({str(exc).strip()}); give the head's "
                          f"dashboard, http://HOST:8265 (`ray start --head` serves it)") from None
    job_id = _submit_when_ready(client)(
        entrypoint=job_entrypoint(stage, params_file, overrides),
        runtime_env=runtime_env(project, cluster),
        submission_id=f"deepmolm-stage{stage}-{uuid.uuid4().hex[:8]}",
        metadata={"project": "deepmolm", "stage": str(stage)},
    )
    log(f"submitted {job_id} to {address}")
    if not wait:
        return {"job_id": job_id, "address": address, "status": str(client.get_job_status(job_id).value)}
    asyncio.run(_stream_logs(client, job_id, log))
    status = client.get_job_status(job_id)
    info = client.get_job_info(job_id)
    return {"job_id": job_id, "address": address, "status": str(status.value),
            "succeeded": status == JobStatus.SUCCEEDED, "message": info.message}


def _submit_when_ready(client):
    """client.submit_job, retried while a freshly started head has no job agent yet (its own advice)."""
    from tenacity import retry, retry_if_exception, stop_after_delay, wait_fixed

    not_ready = retry_if_exception(lambda exc: "No available agent" in str(exc))
    return retry(retry=not_ready, stop=stop_after_delay(120), wait=wait_fixed(2), reraise=True)(client.submit_job)


def auth_headers() -> dict[str, str]:
    """Ray's token authentication (on by default for clusters since Ray 2.5x): the token Ray's own
    tools use, from RAY_AUTH_TOKEN, the file RAY_AUTH_TOKEN_PATH names, or ~/.ray/auth_token."""
    token = os.environ.get("RAY_AUTH_TOKEN")
    if not token:
        path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
        token = path.read_text().strip() if path.is_file() else None
    return {"Authorization": f"Bearer {token}"} if token else {}


async def _stream_logs(client, job_id: str, log: Callable[[str], None]) -> None:
    async for lines in client.tail_job_logs(job_id):
        for line in lines.splitlines():
            log(line)
