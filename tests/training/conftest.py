"""The training tests' shared pieces: Ray processes kept apart per test, and the CLI in a subprocess.
The small instruction set and the BPE tokenizer are in tests/conftest.py: the evaluation tests use them too."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import PARAMS

BIN = Path(sys.executable).parent


class RayProcesses:
    """A private Ray temp dir for the subprocesses; everything Ray started under it is killed after."""

    def __init__(self):
        self.tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")  # short: Ray's socket paths have a length limit

    def env(self) -> dict:
        return {**os.environ, "RAY_TMPDIR": self.tmp, "PATH": f"{BIN}:{os.environ['PATH']}",
                "RAY_DEDUP_LOGS": "0", "PYTHONUNBUFFERED": "1"}

    def cleanup(self) -> None:
        """By environment, not command line: Ray renames its processes (ray::RayTrainWorker, ...)."""
        import psutil

        environments = {}
        for process in psutil.process_iter():
            try:
                environments[process] = process.environ()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        ours = {p.pid for p, env in environments.items() if env.get("RAY_TMPDIR") == self.tmp}
        # the raylet's agents get a clean environment that names their raylet instead
        ours |= {p.pid for p, env in environments.items() if env.get("RAY_RAYLET_PID", "").isdigit()
                 and int(env["RAY_RAYLET_PID"]) in ours}
        for process in environments:
            if process.pid in ours:
                try:
                    process.kill()
                except psutil.NoSuchProcess:
                    pass
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture
def ray_processes():
    processes = RayProcesses()
    yield processes
    processes.cleanup()


def deepmolm_cli(args: list[str], env: dict, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "deepmolm"), *args], env=env, capture_output=True, text=True,
                          cwd=PARAMS.parent, timeout=480, **kwargs)
