"""The README's first command on a copy of the repository: `./dev demo` runs `dvc repro` through every
stage (ingest, featurize on Dask, validate, instructions, tokenizer, both training stages on Ray Train,
evaluation, the report, and MuMo's pretraining and benchmark), each a Prefect flow on one local server; the report opens in headless
Chromium; `dvc push` / `dvc pull` move the artifacts through the default remote; a second
`dvc repro` has nothing to do; a stage-2 param reruns stage 2 and what follows it, nothing before.
A second copy in another directory, given the first one's dvc.lock, runs every stage again and
leaves that dvc.lock unchanged: every output is the same bytes (issue 17's promise)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from deepmolm.config import load_params
from tests.browser import headless
from tests.conftest import copy_repository, newcomer_env

pytestmark = pytest.mark.slow
ROWS_PER_SPLIT = 12
STAGES = ["ingest_chebi20", "featurize_chebi20", "validate_chebi20", "instructions_chebi20", "tokenizer",
          "train_stage1", "train_stage2", "evaluate", "report"]
MUMO_STAGES = ["mumo_pretrain", "mumo_benchmark"]
# MuMo at the smallest size that still runs every part: one pretraining step, one run per dataset and
# split, one extra injection layer, one noise level
MUMO_SIZE = {"max_steps: null\n    batch_size: 32\n    learning_rate: 1.0e-3\n    weight_decay: 0.01\n    warmup_ratio: 0.05\n    min_lr_ratio: 0.1\n    mask_ratio":
             "max_steps: 1\n    batch_size: 32\n    learning_rate: 1.0e-3\n    weight_decay: 0.01\n    warmup_ratio: 0.05\n    min_lr_ratio: 0.1\n    mask_ratio",
             "max_molecules: 150": "max_molecules: 30", "epochs: 4 ": "epochs: 1 ",
             "injection_layers: [1, 8, 16]": "injection_layers: [16]", "coordinate_noise: [0.1, 0.5]": "coordinate_noise: [0.5]"}


# DeepMoLM's training at the test's 12 molecules per split: batches that fit, two epochs a stage
TRAIN_SIZE = {"  micro_batch_size: 8 ": "  micro_batch_size: 2 ", "    epochs: 5\n": "    epochs: 2\n",
              "    epochs: 8\n": "    epochs: 2\n"}


def shrink(params: Path) -> None:
    text = params.read_text()
    for old, new in {**MUMO_SIZE, **TRAIN_SIZE}.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    params.write_text(text)


def dvc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("dvc")
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def ran(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def summaries(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def lock_differences(ours: str, theirs: str) -> list[str]:
    """`stage: path` of every dependency or output whose hash differs between two dvc.lock texts."""
    def hashes(text: str) -> dict[str, str]:
        stages = yaml.safe_load(text)["stages"]
        return {f"{name}: {entry['path']}": entry.get("md5", "")
                for name, stage in stages.items() for kind in ("deps", "outs") for entry in stage.get(kind, [])}
    a, b = hashes(ours), hashes(theirs)
    return sorted(key for key in a.keys() | b.keys() if a.get(key) != b.get(key))


@pytest.mark.timeout(1800)  # two pipelines end to end, then a third partial one
def test_demo_reproduces_every_stage_then_nothing_then_only_what_a_training_param_touches(tmp_path: Path):
    project = copy_repository(tmp_path, rows_per_split=ROWS_PER_SPLIT)
    shrink(project / "params.yaml")
    env = newcomer_env()
    first = subprocess.run(["./dev", "demo"], cwd=project, capture_output=True, text=True, env=env, timeout=900)
    output = first.stdout + first.stderr
    assert first.returncode == 0, output[-6000:]
    order = ran(output)
    assert [stage for stage in order if stage in STAGES] == STAGES and sorted(order) == sorted(STAGES + MUMO_STAGES)
    assert order.index("validate_chebi20") < order.index("mumo_pretrain") < order.index("mumo_benchmark")
    assert "Prefect server for this run: http://127.0.0.1:" in output and "Flow run" in output

    by_kind = {}
    for s in summaries(first.stdout):
        kind = ("mumo_pretrain" if str(s.get("run", "")).startswith("mumo-pretrain") else
                "mumo_benchmark" if "table" in s and "runs" in s else
                "raw" if "snapshot" in s and "source" in s else "shards" if "reused" in s else
                "contract" if "evaluated" in s and "target" in s else "instructions" if "examples_by_task" in s else
                "tokenizer" if "vocab_size" in s else f"stage{s['stage']}" if "stage" in s else
                "metrics" if "baseline" in s else "report" if "report" in s else None)
        by_kind.setdefault(kind, s)
    rows = 2 * ROWS_PER_SPLIT
    assert (by_kind["raw"]["input_rows"], by_kind["raw"]["accepted"]) == (rows, rows)
    assert by_kind["shards"]["accepted"] + by_kind["shards"]["rejected"] == rows
    assert by_kind["contract"]["success"] is True
    assert f"{rows} input = {rows} accepted + 0 rejected" in first.stdout

    stage1, stage2 = by_kind["stage1"], by_kind["stage2"]
    counts1, counts2 = stage1["row_counts"], stage2["row_counts"]
    assert counts1["train_molecules"] + counts1["holdout_molecules"] == ROWS_PER_SPLIT, "stage 1: validation captions"
    assert counts1["rows"] == ROWS_PER_SPLIT and counts2["rows"] == ROWS_PER_SPLIT * 5, "stage 2: a caption and 4 questions"
    assert counts2["train"] + counts2["holdout"] + counts2["too_long"] == counts2["rows"] and counts2["too_long"] == 0
    assert stage2["last_loss"] < stage2["first_loss"]
    epochs = (project / "reports" / "train" / "stage2" / "epochs.csv").read_text().splitlines()
    assert epochs[0] == "epoch,step,train_loss,holdout_loss"
    assert len(epochs) - 1 == load_params(project / "params.yaml").train.stage2.epochs, "a held-out loss per epoch"
    metrics = json.loads((project / "reports" / "eval" / "metrics.json").read_text())
    assert metrics["dataset"]["eval_splits"] == ["test"] and metrics["dataset"]["eval_molecules"] == ROWS_PER_SPLIT
    assert metrics["model"]["captions"]["n"] == metrics["baseline"]["captions"]["n"] == ROWS_PER_SPLIT
    assert metrics["baseline"]["pool_molecules"] == counts1["train_molecules"], "retrieval from the trained-on molecules"
    assert set(metrics["mean_baseline"]["properties"]) == {"mw", "logp", "tpsa", "complexity"}
    assert set(metrics["model"]["properties"]) == {"mw", "logp", "tpsa", "complexity"}
    assert metrics["model"]["run"] == stage2["run"]

    # MuMo: pretrained on the shards' graphs, then every run of the grid beside the forest
    pretrained = by_kind["mumo_pretrain"]
    assert pretrained["molecules"] + sum(pretrained["rejected_by_reason"].values()) == by_kind["shards"]["accepted"]
    assert (project / "models" / "mumo" / "pretrained" / "model.safetensors").is_file()
    results = json.loads((project / "reports" / "mumo" / "results.json").read_text())
    assert sorted(r["name"] for r in results["runs"]) == sorted(
        [f"{d}/{s}/seed0/layer9" for d in ("esol", "freesolv") for s in ("random", "scaffold")] + ["esol/random/seed0/layer16"])
    assert all("test_noise_0.5" in r for r in results["runs"])
    assert all(r["sizes"]["train"] == 24 for r in results["runs"] if r["split"] == "random")  # 80% of 30
    assert len(results["baseline"]) == 4 and results["datasets"]["esol"]["with_conformer"] == 30
    assert "| esol | random | 9 | 1 |" in (project / "reports" / "mumo" / "results.md").read_text()

    page = project / "reports" / "index.html"
    assert f"report: {page}" in output
    text = page.read_text()
    assert "href='data/index.html'" in text and (project / "reports" / "data" / "index.html").is_file()
    assert "id='caption-metrics'" in text and "retrieval baseline" in text
    gallery, inputs = min(ROWS_PER_SPLIT, 24), min(ROWS_PER_SPLIT, 6)
    dom = headless("--dump-dom", page.as_uri())
    images = gallery + inputs + 1
    assert f'data-images-loaded="{images}/{images}"' in dom.stdout, "curves, the encoder's inputs, every molecule loaded"
    assert dom.stdout.count("class=\"card\"") == gallery + inputs

    # a fresh clone elsewhere (another path, one level deeper) with our dvc.lock: its `./dev demo`
    # runs every stage, since nothing is there yet, and writes the same dvc.lock back
    lock = (project / "dvc.lock").read_text()
    elsewhere = copy_repository(tmp_path / "elsewhere" / "deeper", rows_per_split=ROWS_PER_SPLIT)
    shrink(elsewhere / "params.yaml")
    (elsewhere / "dvc.lock").write_text(lock)
    again = subprocess.run(["./dev", "demo"], cwd=elsewhere, capture_output=True, text=True, env=env, timeout=900)
    assert again.returncode == 0, (again.stdout + again.stderr)[-6000:]
    assert sorted(ran(again.stdout + again.stderr)) == sorted(STAGES + MUMO_STAGES)
    differing = lock_differences(lock, (elsewhere / "dvc.lock").read_text())
    assert not differing, f"outputs that differ between two clones: {differing}"
    assert (elsewhere / "dvc.lock").read_text() == lock

    # every artifact is DVC's: pushed to the default remote, pulled back into an empty cache
    pushed = dvc("push", cwd=project)
    assert pushed.returncode == 0, pushed.stderr
    assert any((tmp_path / "deepmolm-dvc-storage").rglob("*")), "the default remote is beside the repository"
    model = project / "models" / "stage2" / "model.safetensors"
    before = model.read_bytes()
    shutil.rmtree(project / ".dvc" / "cache")
    shutil.rmtree(project / "models" / "stage2")
    pulled = dvc("pull", cwd=project)
    assert pulled.returncode == 0, pulled.stderr
    assert model.read_bytes() == before

    started = time.perf_counter()
    second = dvc("repro", cwd=project)
    noop_s = time.perf_counter() - started
    assert second.returncode == 0, second.stderr
    assert ran(second.stdout) == [] and "didn't change, skipping" in second.stdout
    print(f"no-op dvc repro: {noop_s:.1f} s")

    params = project / "params.yaml"
    text, count = re.subn(r"(stage2:.*?learning_rate: )1\.0e-3", r"\g<1>5.0e-4", params.read_text(), flags=re.S)
    assert count == 1
    params.write_text(text)
    status = dvc("status", "--json", cwd=project)
    assert set(json.loads(status.stdout)) == {"train_stage2"}, status.stdout
    # under one local Prefect server, as the demo runs (stage commands find `deepmolm` on the PATH)
    env = newcomer_env(PREFECT_HOME=str(tmp_path / "prefect"))
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    third = subprocess.run([sys.executable, "-m", "flows.local_server", "dvc", "repro"], cwd=project, capture_output=True,
                           text=True, timeout=600, env=env)
    assert third.returncode == 0, third.stdout[-4000:] + third.stderr[-4000:]
    assert ran(third.stdout) == ["train_stage2", "evaluate", "report"]
    retrained = json.loads((project / "reports" / "train" / "stage2" / "summary.json").read_text())
    assert retrained["run"] != stage2["run"] and retrained["up_to_date"] is False
