"""Shared fixtures: the repository's params with all outputs redirected into a temporary dir."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from deepmolm.config import Params, load_params

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DEEPMOLM_SHARED", REPO.parent / "shared")).resolve()
PARAMS = REPO / "params.yaml"


@pytest.fixture(scope="session")
def shared() -> Path:
    data = SHARED / "data"
    assert data.is_dir(), f"the shared data directory {data} is missing (set DEEPMOLM_SHARED)"
    return data


def tmp_overrides(tmp_path: Path) -> list[str]:
    return [f"paths.{name}_dir={tmp_path / name}" for name in ("raw", "cache", "shards")]


@pytest.fixture
def make_params(tmp_path: Path):
    """params.yaml of the repo, outputs under tmp_path, plus the given overrides."""

    def make(*overrides: str) -> Params:
        return load_params(PARAMS, [*tmp_overrides(tmp_path), *overrides])

    return make


def run_cli(*args: str, cwd: Path = REPO, check: bool = False) -> subprocess.CompletedProcess:
    """Run the installed `deepmolm` console script as a user would."""
    exe = Path(sys.executable).with_name("deepmolm")
    result = subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"deepmolm {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result
