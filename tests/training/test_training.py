"""Training on Ray Train: stage 1 then stage 2 on 2 CPU workers (DDP, then DeepSpeed ZeRO-2), a
killed worker and a killed run that both continue from their checkpoints, and the Jobs API.

Every run is the real CLI in a subprocess with its own local Ray (or the Ray head a test starts),
so a test can kill processes without touching the test runner."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from deepmolm.config import load_params
from deepmolm.inference import Predictor, molecule_from_smiles
from deepmolm.runtime.run_log import read_runs
from deepmolm.training.deepmolm.launch import RUN_FACTS
from deepmolm.training.driver import SUMMARY, read_metric
from tests.conftest import PARAMS
from tests.training.conftest import BIN, RayProcesses, deepmolm_cli


def _train_overrides(root: Path, *extra: str) -> list[str]:
    """Tiny runs on the 10-molecule set (a TSV source: rows without a split), outputs under root."""
    return [
        f"paths.reports_dir={root / 'reports'}", f"paths.logs_dir={root / 'logs'}", f"train.runs_dir={root / 'runs'}",
        f"train.models_dir={root / 'models'}",
        "train.splits=null", "train.micro_batch_size=2", "model.preset=tiny", "model.max_length=512",
        "train.holdout.fraction=0", *extra,
    ]


def _train(stage: int, overrides: list[str], env: dict, *extra: str) -> dict:
    args = ["train", "run", "--stage", str(stage), *extra, "--json"]
    for override in overrides:
        args += ["-S", override]
    done = deepmolm_cli(args, env)
    assert done.returncode == 0, done.stderr[-4000:] + done.stdout[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _steps(reports: Path, stage: int) -> list[dict]:
    """The stage's loss per optimizer step, as dvclive wrote it for `dvc plots`."""
    return [{"step": step, "loss": loss} for step, loss in read_metric(reports / "train" / f"stage{stage}", "train/loss")]


def _falls(rows: list[dict]) -> tuple[float, float]:
    losses = [float(r["loss"]) for r in rows]
    third = max(1, len(losses) // 3)
    return sum(losses[:third]) / third, sum(losses[-third:]) / third


def _snapshot_steps(run_dir: Path) -> list[int]:
    """Steps of the checkpoints Ray Train has committed for the run (its snapshot file)."""
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    try:
        text = snapshot.read_text()
    except OSError:
        return []
    return sorted({int(step) for step in re.findall(r"checkpoint_(\d{7})", text)})


def _wait_for(predicate, timeout: float, what: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if process.poll() is not None:
            raise AssertionError(f"the run ended (rc {process.returncode}) before {what}:\n"
                                 + process.stdout.read()[-4000:])
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_ray_head(ray_processes: RayProcesses) -> str:
    """A real Ray head on loopback with its dashboard (the Jobs API); every port picked free."""
    dashboard, gcs, agent, client = (_free_port() for _ in range(4))
    head = subprocess.run([str(BIN / "ray"), "start", "--head", f"--port={gcs}", "--node-ip-address=127.0.0.1",
                           "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--include-dashboard=true",
                           f"--dashboard-agent-listen-port={agent}", f"--ray-client-server-port={client}",
                           "--num-cpus=2", f"--temp-dir={ray_processes.tmp}", "--disable-usage-stats"],
                          env=ray_processes.env(), capture_output=True, text=True, timeout=120)
    assert head.returncode == 0, head.stderr[-3000:]
    return f"http://127.0.0.1:{dashboard}"


@pytest.mark.slow
@pytest.mark.network
@pytest.mark.extended  # about 5 minutes: outside CI's run, whose training goes through tests/test_end_to_end.py
def test_two_stages_on_two_cpu_workers_surviving_a_killed_worker_and_a_killed_run(
        instruction_set, tokenizer_dir, tmp_path, ray_processes):
    """Stage 1 (DDP): a worker is SIGKILLed (Ray Train restarts the group from the last checkpoint),
    then the whole run is SIGKILLed; the same command, submitted to a local Ray head through the Jobs
    API, resumes it and finishes. Stage 2 (DeepSpeed ZeRO-2, through the Prefect flow) starts from
    stage 1's export; both accumulate 2 micro-batches and their loss falls; the exported model
    answers. A job that cannot run ends FAILED, exit 1. One sequence: every Ray start costs ~35 s here."""
    shutil.copytree(tokenizer_dir, tmp_path / "models" / "tokenizer")
    overrides = _train_overrides(tmp_path, "train.stage1.max_steps=40", "train.stage1.learning_rate=0.01",
                                 "train.stage2.epochs=1", "train.stage2.learning_rate=0.003",
                                 "train.micro_batch_size=1", "train.grad_accum_steps=2",  # 2 workers x 2 micro-batches
                                 "train.checkpoint_every_steps=4", "train.keep_checkpoints=3", "train.max_failures=2",
                                 f"paths.instructions_dir={instruction_set}")
    sets = [arg for override in overrides for arg in ("-S", override)]
    run = subprocess.Popen([str(BIN / "deepmolm"), "train", "run", "--stage", "1", *sets], env=ray_processes.env(),
                           cwd=PARAMS.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    try:
        runs = tmp_path / "runs"
        _wait_for(lambda: any(_snapshot_steps(d) for d in runs.glob("stage1-*")), 240, "first checkpoint", run)
        run_dir = next(runs.glob("stage1-*"))
        first = max(_snapshot_steps(run_dir))
        os.kill(int((run_dir / "workers" / "rank1.pid").read_text()), signal.SIGKILL)
        _wait_for(lambda: max(_snapshot_steps(run_dir)) >= first + 8, 240, "checkpoints after the restart", run)
        later = max(_snapshot_steps(run_dir))
        os.killpg(run.pid, signal.SIGKILL)  # the whole run dies: driver, controller and workers
        run.wait(timeout=30)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    ray_processes.cleanup()
    assert not (tmp_path / "models" / "stage1").exists() and later < 40

    address = _start_ray_head(ray_processes)
    submitted = deepmolm_cli(["train", "submit", "--address", address, "--stage", "1", *sets, "--json"], ray_processes.env())
    assert submitted.returncode == 0, submitted.stderr[-4000:] + submitted.stdout[-2000:]
    job = json.loads(submitted.stdout.strip().splitlines()[-1])
    assert job["status"] == "SUCCEEDED" and job["job_id"].startswith("deepmolm-stage1-")
    assert "[train] stage 1 step 40/40" in submitted.stderr, "the job's logs are streamed back"
    assert "resuming at step" in submitted.stderr

    summary = json.loads((tmp_path / "reports" / "train" / "stage1" / SUMMARY).read_text())
    assert summary["run"] == run_dir.name and summary["steps"] == 40 and summary["workers"] == 2
    assert summary["strategy"] == "ddp" and summary["rows"] == 10
    assert not set(RUN_FACTS) & set(summary), "when, how long and what was resumed are the run log's, not the metrics'"
    logged = read_runs(tmp_path / "logs", "train")[-1]
    assert logged["run"] == summary["run"] and logged["seconds"] > 0
    assert (Path(logged["throughput"]) / "throughput.csv").is_file()
    resumed = logged["resumed_from"]
    assert len(resumed) == 2 and first <= resumed[0] <= later and resumed[1] >= later, resumed
    rows = _steps(tmp_path / "reports", 1)
    assert [int(r["step"]) for r in rows] == list(range(1, 41)), "one history row per step, none lost or repeated"
    start, end = _falls(rows)
    assert end < start, f"stage 1 loss did not fall: {start:.3f} -> {end:.3f}"
    stage1 = tmp_path / "models" / "stage1"
    assert (stage1 / "model.safetensors").is_file() and (stage1 / "tokenizer.json").is_file()
    assert json.loads((stage1 / "provenance.json").read_text())["run"] == summary["run"]
    assert (Path(logged["checkpoint"]) / "trainable.safetensors").is_file()

    failing = deepmolm_cli(["train", "submit", "--address", address, "--stage", "1", *sets, "-S", "train.splits=[train]",
                         "--json"], ray_processes.env())  # no rows of a train split here: the job fails
    assert failing.returncode == 1
    assert json.loads(failing.stdout.strip().splitlines()[-1])["status"] == "FAILED"
    ray_processes.cleanup()

    second = _train(2, [*overrides, "train.strategy=deepspeed"], ray_processes.env(), "--prefect")
    assert second["strategy"] == "deepspeed" and second["rows"] == 50  # captions and property questions
    refitted = second["number_head_refit"]  # on both workers' slots, gathered
    assert refitted["slots"] > 0 and refitted["train_l1"][1] < refitted["train_l1"][0], refitted
    rows = _steps(tmp_path / "reports", 2)
    assert len(rows) == second["steps"] == 50 // 2 // 1 // 2
    start, end = _falls(rows)
    assert end < start, f"stage 2 loss did not fall: {start:.3f} -> {end:.3f}"
    written = json.loads((tmp_path / "runs" / second["run"] / "deepspeed_config.json").read_text())
    assert written["zero_optimization"]["stage"] == 2 and written["train_batch_size"] == 4
    assert written["gradient_accumulation_steps"] == 2
    shards = sorted(p.name for p in (Path(second["checkpoint"]) / "state").glob("*optim_states.pt"))
    assert len(shards) == 2, f"one ZeRO optimizer shard per worker, got {shards}"
    recorded = json.loads((tmp_path / "models" / "stage2" / "provenance.json").read_text())["init"]
    assert not Path(recorded).is_absolute() and (PARAMS.parent / recorded).resolve() == stage1.resolve()

    started = time.perf_counter()
    again = _train(2, [*overrides, "train.strategy=deepspeed"], ray_processes.env())
    assert again["up_to_date"] and again["run"] == second["run"] and time.perf_counter() - started < 60

    params = load_params(PARAMS, ["model.generation.max_new_tokens=8", "model.generation.min_new_tokens=0"])
    molecule = molecule_from_smiles("CC(=O)O", params)
    text = Predictor(tmp_path / "models" / "stage2").answer(molecule, "Describe the input molecule.", params)
    assert isinstance(text, str), "the exported model loads and answers as `deepmolm predict` does"


@pytest.mark.slow
@pytest.mark.network
@pytest.mark.extended  # a Ray head and a Ray Train job: about 2 minutes
def test_the_readmes_submit_command_trains_stage2_with_the_default_params(instruction_set, tokenizer, tmp_path,
                                                                          ray_processes, monkeypatch):
    """`deepmolm train submit --address http://HEAD:8265 --stage 2`, unchanged, in a project laid out as
    the default params expect it, against a real head on loopback that shares the filesystem. The
    job runs in Ray's copy of the project and must read and write the project itself; what it
    records resolves from the project, so `deepmolm serve` finds the baseline's molecules."""
    from deepmolm.serve.asking import Asker
    from deepmolm.training.deepmolm.stages import initial_model
    from tests.conftest import split_copy

    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(PARAMS, project / "params.yaml")
    params = load_params(project / "params.yaml")
    sets = project / "data" / "instructions" / "chebi20"
    sets.mkdir(parents=True)
    trained_on = split_copy(instruction_set, sets, params.train.splits[0])
    initial_model(params, 1, tokenizer, None).save_pretrained(project / "models" / "stage1")
    tokenizer.save_pretrained(project / "models" / "stage1")

    address = _start_ray_head(ray_processes)
    submitted = subprocess.run([str(BIN / "deepmolm"), "train", "submit", "--address", address, "--stage", "2"],
                               cwd=project, env=ray_processes.env(), capture_output=True, text=True, timeout=480)
    assert submitted.returncode == 0, submitted.stderr[-4000:] + submitted.stdout[-4000:]
    assert "model in models/stage2" in submitted.stdout, "the job's log names the project's path"

    stage2 = project / "models" / "stage2"
    recorded = json.loads((stage2 / "provenance.json").read_text())
    assert recorded["instructions"] == f"data/instructions/chebi20/{trained_on.name}" and recorded["init"] == "models/stage1"
    logged = read_runs(project / "logs", "train")[-1]
    assert logged["out"] == str(stage2) and logged["cwd"] != str(project), "the project's log, from Ray's copy"
    assert not list(project.glob("**/_ray_pkg_*")), "nothing written into a copy"

    monkeypatch.chdir(project)  # where a user runs `deepmolm serve --checkpoint models/stage2`
    asker = Asker(Path("models/stage2"), params)
    assert asker.baseline_missing is None and len(asker.index) == 10
