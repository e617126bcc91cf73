"""The device check prepared for a lent GPU (benchmarks/gpu_check.py), run here in its dry mode: the
same DeepSpeed ZeRO-2 step on CPU at the tiny preset, so the script works the day a GPU comes."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # DeepSpeed's import and initialisation: about 30 s


def test_the_gpu_check_runs_dry_on_cpu_and_prints_its_figures():
    ran = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--dry"], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-3000:]
    report = json.loads(ran.stdout.strip().splitlines()[-1])
    assert report["device"] == "cpu" and report["preset"] == "tiny" and report["zero_stage"] == 2
    assert report["steps"] == 3 and report["samples_per_s"] > 0 and report["gflops_per_step"] > 0
    assert math.isfinite(report["loss_first"]) and math.isfinite(report["loss_last"])
    assert report["mfu"] is None and report["peak_memory_gib"] is None, "no GPU: no MFU, no GPU memory"
    assert report["frozen"] > 0 and report["trainable"] > 0, "the recipe's frozen DeepEncoder, trained projector and LLM"
