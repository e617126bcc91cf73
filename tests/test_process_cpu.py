"""benchmarks/process_cpu.py: what it names each process, and that it counts a child's CPU and passes
its exit code on."""

from __future__ import annotations

import json
import subprocess
import sys

from benchmarks.process_cpu import kind_of


def test_processes_are_named_by_kind_and_deepmolm_by_its_subcommand():
    assert kind_of(["/v/bin/python", "/v/bin/deepmolm", "eval", "run", "--model", "m"]) == "deepmolm eval run"
    assert kind_of(["/v/bin/deepmolm", "--help"]) == "deepmolm"
    assert kind_of(["/v/bin/deepmolm", "predict", "/tmp/model", "--smiles", "CCO"]) == "deepmolm predict"
    assert kind_of(["/v/bin/python", "-u", "-c", "import sys;exec(eval(sys.stdin.readline()))"]).startswith("pytest")
    assert kind_of(["ray-dashboard-NodeHead-0"]) == "ray: dashboard and agents"
    assert kind_of(["/v/bin/python", "-m", "benchmarks.process_cpu", "--", "bash", "-c", "./dev test"]).startswith("this sampler")
    assert kind_of(["/v/ray/core/src/ray/raylet/raylet", "--head"]) == "ray: raylet"
    assert kind_of(["/v/bin/python", "/v/ray/_private/workers/default_worker.py"]).startswith("ray: train workers")
    assert kind_of(["/v/bin/prefect", "server", "start"]) == "prefect server"
    assert kind_of(["/usr/bin/sleep", "1"]) == "other: sleep" and kind_of([]) == "other"


def test_a_childs_cpu_is_counted_and_its_exit_code_passed_on(tmp_path):
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.5: pass\nraise SystemExit(3)"
    done = subprocess.run([sys.executable, "-m", "benchmarks.process_cpu", "--interval", "0.1", "--json",
                           str(tmp_path / "cpu.json"), "--", sys.executable, "-c", burn], capture_output=True, text=True)
    assert done.returncode == 3, done.stderr
    summary = json.loads((tmp_path / "cpu.json").read_text())
    python = [row for row in summary["kinds"] if row["kind"] == "other: " + sys.executable.rsplit("/", 1)[-1]]
    assert python and python[0]["cpu_s"] >= 1.2, summary
    assert summary["machine_busy_cpu_s"] >= python[0]["cpu_s"] - 0.2 and 0 < summary["machine_busy_share"] <= 1.01
