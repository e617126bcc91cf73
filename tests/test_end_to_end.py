"""The README's first command on a copy of the repository: `./dev demo` runs `dvc repro` through every
stage (ingest, featurize on Dask, validate, instructions, tokenizer, both training stages on Ray Train,
evaluation, the report, and MuMo's pretraining and benchmark), each a Prefect flow on one local server; the report opens in headless
Chromium; `dvc push` / `dvc pull` move the artifacts through the default remote; a second
`dvc repro` has nothing to do; a stage-2 param reruns stage 2 and what follows it, nothing before.
The demo runs at another path than the one its outputs were recorded at, in an environment that
stands for another processor, and must write the recorded bytes (tests/e2e_outputs.json, issues 17
and 40): every output is a function of its inputs, params and code, wherever it is made."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from deepmolm.config import load_params
from deepmolm.data.shards.parts import read_manifest, resolve_version
from deepmolm.data.sources.raw_table import read_manifest as read_raw_manifest
from deepmolm.data.sources.raw_table import resolve_snapshot
from deepmolm.training.driver import SUMMARY, read_metric
from tests.browser import headless
from tests.conftest import copy_repository, newcomer_env

# `./dev test` deals whole files to its xdist workers (--dist loadfile), so one worker runs this
# module and its checks share one demo run, in file order; `longest`: collected first
pytestmark = [pytest.mark.slow, pytest.mark.longest, pytest.mark.timeout(1800)]  # the first check waits for the demo
ROWS_PER_SPLIT = 12
STAGES = ["ingest_chebi20", "featurize_chebi20", "validate_chebi20", "instructions_chebi20", "tokenizer",
          "pretrain_encoder", "train_stage1", "train_stage2", "evaluate", "report"]
MUMO_STAGES = ["ingest_moses", "featurize_moses", "validate_moses", "mumo_pretrain", "mumo_benchmark"]
MOSES_ROWS = 30  # the first 30 rows of MOSES's file hold 4 ESOL molecules (rows 8, 15, 19, 21)
# MuMo at the smallest size that still runs every part: two pretraining steps (the held-out loss after
# each), one run per dataset and split, one extra injection layer, one noise level
MUMO_SIZE = {"max_steps: null\n    batch_size: 32\n    learning_rate: 1.0e-3\n    weight_decay: 0.01\n    warmup_ratio: 0.05\n    min_lr_ratio: 0.1\n    mask_ratio":
             "max_steps: 2\n    batch_size: 8\n    learning_rate: 1.0e-3\n    weight_decay: 0.01\n    warmup_ratio: 0.05\n    min_lr_ratio: 0.1\n    mask_ratio",
             "max_molecules: 150": "max_molecules: 30", "epochs: 4 ": "epochs: 1 ",
             "injection_layers: [1, 8, 16]": "injection_layers: [16]", "coordinate_noise: [0.1, 0.5]\n  baseline_trees": "coordinate_noise: [0.5]\n  baseline_trees",  # MuMo's, not eval.robustness's
             "    max_rows: 300\n": f"    max_rows: {MOSES_ROWS}\n", "holdout_molecules: 30 ": "holdout_molecules: 6 ",
             "holdout_every_steps: null ": "holdout_every_steps: 1 "}


# DeepMoLM's training at the test's 12 molecules per split: batches that fit, two epochs a stage, the
# number head fitted again in 300 steps (its 48 slots; 3,000 took 15 s of each stage 2)
TRAIN_SIZE = {"  micro_batch_size: 8 ": "  micro_batch_size: 2 ", "    epochs: 5\n": "    epochs: 2\n",
              "    epochs: 8\n": "    epochs: 2\n", "number_head_refit: {steps: 3000,": "number_head_refit: {steps: 300,"}


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


RECORDED = Path(__file__).with_name("e2e_outputs.json")


def outputs(project: Path) -> dict[str, str]:
    """`stage: path` -> md5 of every output in a project's dvc.lock."""
    stages = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    return {f"{name}: {entry['path']}": entry["md5"] for name, stage in stages.items() for entry in stage.get("outs", [])}


@dataclass
class Demo:
    project: Path
    output: str  # stdout and stderr of `./dev demo`
    stdout: str

    def json(self, *parts: str) -> dict:
        return json.loads(self.project.joinpath(*parts).read_text())


# The demo's environment stands for another processor than the recording's: each of these alone
# changes the bits of a training step where params.yaml `numerics` is not applied
# (benchmarks/numerics.py): ATen's kernels without AVX (a processor ATen gives no AVX2), oneMKL's SSE2
# branch instead of its own dispatch (what it runs differs by vendor), and two threads per process.
ANOTHER_PROCESSOR = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "OMP_NUM_THREADS": "2",
                     "MKL_NUM_THREADS": "2"}


def run_demo(dest: Path, **env: str) -> Demo:
    """`./dev demo` from scratch on a copy of the repository at the test's size."""
    project = copy_repository(dest, rows_per_split=ROWS_PER_SPLIT)
    shrink(project / "params.yaml")
    done = subprocess.run(["./dev", "demo"], cwd=project, capture_output=True, text=True, env=newcomer_env(**env),
                          timeout=1500)
    assert done.returncode == 0, f"./dev demo in {project}:\n{(done.stdout + done.stderr)[-6000:]}"
    return Demo(project, done.stdout + done.stderr, done.stdout)


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> Demo:
    """One `./dev demo` from scratch, one level deeper than a copy usually sits, in another
    processor's environment, shared by the checks below. The later checks push, pull and retrain it."""
    return run_demo(tmp_path_factory.mktemp("elsewhere") / "deeper", **ANOTHER_PROCESSOR)


def test_every_stage_runs_in_order_as_a_prefect_flow(demo):
    order = ran(demo.output)
    assert [stage for stage in order if stage in STAGES] == STAGES and sorted(order) == sorted(STAGES + MUMO_STAGES)
    assert [stage for stage in order if stage in MUMO_STAGES] == MUMO_STAGES
    assert "Prefect server for this run: http://127.0.0.1:" in demo.output and "Flow run" in demo.output


def test_every_input_row_is_accounted_for_and_the_contract_passes(demo):
    rows = 2 * ROWS_PER_SPLIT
    raw = read_raw_manifest(resolve_snapshot(demo.project / "data" / "raw" / "chebi20"))["counts"]
    assert (raw["input_rows"], raw["accepted"]) == (rows, rows)
    shards = read_manifest(resolve_version(demo.project / "data" / "shards" / "chebi20"))["counts"]
    assert shards["accepted"] + shards["rejected"] == shards["input_rows"] == rows
    quality = demo.json("reports", "data", "summary.json")
    assert quality["contract"]["success"] is True and quality["counts"]["accepted"] == shards["accepted"]
    assert f"{rows} input = {rows} accepted + 0 rejected" in demo.stdout  # `deepmolm data summary` at the end


def test_the_cpu_recipe_starts_from_a_random_encoder_and_stage_0_says_so(demo):
    """The demo's recipe does not start stage 1 from a pretrained encoder (recipe=cpu_drawing does;
    tests/training/test_encoder_pretrain.py runs that stage on Ray): stage 0 leaves a note, not a model."""
    note = demo.json("models", "encoder", "NOT_USED.json")["reason"]
    assert "'cpu'" in note and "train.init.encoder is None" in note
    assert demo.json("reports", "train", "encoder", SUMMARY)["skipped"] is True
    assert demo.json("models", "stage1", "provenance.json")["init"] is None


def test_both_training_stages_learn_and_record_a_held_out_loss_per_epoch(demo):
    stage1, stage2 = demo.json("reports", "train", "stage1", SUMMARY), demo.json("reports", "train", "stage2", SUMMARY)
    counts1, counts2 = stage1["row_counts"], stage2["row_counts"]
    assert counts1["train_molecules"] + counts1["holdout_molecules"] == ROWS_PER_SPLIT, "stage 1: validation captions"
    assert counts1["rows"] == ROWS_PER_SPLIT and counts2["rows"] == ROWS_PER_SPLIT * 5, "stage 2: a caption and 4 questions"
    assert counts2["train"] + counts2["holdout"] + counts2["too_long"] == counts2["rows"] and counts2["too_long"] == 0
    assert stage2["last_loss"] < stage2["first_loss"]
    logged_steps = [line for line in demo.output.splitlines() if "[train] stage 2 step" in line]
    assert logged_steps and len(logged_steps) == len(set(logged_steps)), "each progress line once"
    refitted = stage2["number_head_refit"]  # the head fitted again on both workers' slots, gathered
    assert refitted["slots"] == 4 * counts2["train_molecules"] and refitted["train_l1"][1] < refitted["train_l1"][0]
    assert refitted["held_out_slots"] == 4 * counts2["holdout_molecules"]
    assert stage1["number_head_refit"] is None, "captions only: no slot to fit on"
    logged = demo.project / "reports" / "train" / "stage2"  # dvclive's directory
    epochs, held = read_metric(logged, "epoch/train_loss"), read_metric(logged, "holdout/loss")
    assert len(epochs) == load_params(demo.project / "params.yaml").train.stage2.epochs and epochs[-1][0] == stage2["steps"]
    assert [step for step, _ in read_metric(logged, "train/loss")] == list(range(1, stage2["steps"] + 1)), "a row per step"
    # a held-out loss at each epoch's end when the stage held molecules out (5% of 12 molecules may be none)
    assert [step for step, _ in held] == ([step for step, _ in epochs] if counts2["holdout"] else [])


def test_evaluation_scores_the_model_beside_both_baselines_on_the_test_split(demo):
    metrics = demo.json("reports", "eval", "metrics.json")
    stage1, stage2 = demo.json("reports", "train", "stage1", SUMMARY), demo.json("reports", "train", "stage2", SUMMARY)
    assert metrics["dataset"]["eval_splits"] == ["test"] and metrics["dataset"]["eval_molecules"] == ROWS_PER_SPLIT
    assert metrics["model"]["captions"]["n"] == metrics["baseline"]["captions"]["n"] == ROWS_PER_SPLIT
    assert metrics["baseline"]["pool_molecules"] == stage1["row_counts"]["train_molecules"], "retrieval from the trained-on molecules"
    assert set(metrics["mean_baseline"]["properties"]) == set(metrics["model"]["properties"]) == {"mw", "logp", "tpsa", "complexity"}
    assert metrics["model"]["run"] == stage2["run"]
    assert metrics["grounding"]["molecules"] == 3 and (demo.project / "reports" / "eval" / "grounding.png").is_file()
    dependence = metrics["drawing_dependence"]  # every test molecule answered again without each view
    assert dependence["molecules"] == ROWS_PER_SPLIT and set(dependence["deltas"]) == {"blank_drawing", "no_geometry"}
    # `dvc exp show` tabulates what `dvc metrics show` reads (this copy has no commit for exp show to list)
    workspace = json.loads(dvc("metrics", "show", "--json", cwd=demo.project).stdout)[""]
    shown = workspace["data"]["reports/eval/metrics.json"]["data"]["drawing_dependence"]
    for view in ("blank_drawing", "no_geometry"):  # (DVC leaves out the None of a property without a valid answer)
        assert shown["deltas"][view]["captions"] == dependence["deltas"][view]["captions"], "DVC's metrics hold the deltas"


def test_mumo_pretrains_on_the_shards_graphs_and_runs_its_grid_beside_the_forest(demo):
    """MOSES's first rows as a source: the four ESOL molecules among them rejected by InChIKey at
    ingest, the rest featurized and gated like ChEBI-20's, and MuMo pretrained on them."""
    ingested = read_raw_manifest(resolve_snapshot(demo.project / "data" / "raw" / "moses"))
    raw = ingested["counts"]
    assert (raw["input_rows"], raw["accepted"], ingested["rejected_by_reason"]) == (MOSES_ROWS, MOSES_ROWS - 4, {"benchmark_molecule": 4})
    shards = read_manifest(resolve_version(demo.project / "data" / "shards" / "moses"))["counts"]
    quality = demo.json("reports", "moses", "data", "summary.json")
    assert shards["input_rows"] == raw["accepted"] and quality["contract"]["success"]
    assert quality["ingest"]["rejected_by_reason"] == {"benchmark_molecule": 4}, "the page counts from the file's rows"
    pretrained = demo.json("reports", "mumo", "pretrain", SUMMARY)
    assert pretrained["benchmark_molecules"] == 0 and pretrained["shards"].startswith("data/shards/moses/")
    assert pretrained["held_out"] == 6 and pretrained["molecules"] == shards["accepted"] - 6 - sum(pretrained["rejected_by_reason"].values())
    assert pretrained["holdout_loss_before"] > 0 and pretrained["holdout_loss_after"] > 0
    held = read_metric(demo.project / "reports" / "mumo" / "pretrain", "holdout/loss")
    assert [step for step, _ in held] == [1, 2] and held[-1][1] == pretrained["holdout_loss_after"], "every step, the last one too"
    assert (demo.project / "models" / "mumo" / "pretrained" / "model.safetensors").is_file()
    results = demo.json("reports", "mumo", "results.json")
    assert sorted(r["name"] for r in results["runs"]) == sorted(
        [f"{d}/{s}/seed0/layer9" for d in ("esol", "freesolv") for s in ("random", "scaffold")] + ["esol/random/seed0/layer16"])
    assert all("test_noise_0.5" in r for r in results["runs"])
    assert all(r["sizes"]["train"] == 24 for r in results["runs"] if r["split"] == "random")  # 80% of 30
    assert len(results["baseline"]) == 4 and results["datasets"]["esol"]["with_conformer"] == 30
    assert "| esol | random | 9 | 1 |" in (demo.project / "reports" / "mumo" / "results.md").read_text()


def test_the_report_page_loads_every_image_in_headless_chromium(demo):
    page = demo.project / "reports" / "index.html"
    assert f"report: {page}" in demo.output
    text = page.read_text()
    assert "href='data/index.html'" in text and (demo.project / "reports" / "data" / "index.html").is_file()
    assert "id='caption-metrics'" in text and "retrieval baseline" in text
    gallery, inputs = min(ROWS_PER_SPLIT, 24), min(ROWS_PER_SPLIT, 6)
    assert "id='grounding'" in text
    refitted = demo.json("reports", "train", "stage2", SUMMARY)["number_head_refit"]
    assert (f"on {refitted['slots']:,} training slots, mean L1 on the signed log scale {refitted['train_l1'][0]:.3f} "
            f"&rarr; {refitted['train_l1'][1]:.3f}") in text, "the refit's figures on the page"
    dom = headless("--dump-dom", page.as_uri())
    images = gallery + inputs + 2
    assert f'data-images-loaded="{images}/{images}"' in dom.stdout, "curves, grounding, the encoder's inputs, every molecule loaded"
    assert dom.stdout.count("class=\"card\"") == gallery + inputs


def test_the_demo_writes_the_outputs_recorded_for_this_code(demo):
    """Every output the same bytes as the committed record, made by `python -m tests.e2e_outputs` at
    another path on the recording machine's own code paths: so every output is the same wherever the
    project lives, and the training and evaluation processes take params.yaml `numerics`' code paths
    whatever they inherit. A change that means to change an output records it again."""
    assert sorted(ran(demo.output)) == sorted(STAGES + MUMO_STAGES)
    recorded, written = json.loads(RECORDED.read_text()), outputs(demo.project)
    differing = sorted(key for key in recorded.keys() | written.keys() if recorded.get(key) != written.get(key))
    assert not differing, (f"outputs that differ from {RECORDED.name}: {differing}; if the change means to change "
                           "them, record them again: `python -m tests.e2e_outputs`")


def test_artifacts_go_through_the_default_remote_and_a_second_repro_does_nothing(demo):
    project = demo.project
    pushed = dvc("push", cwd=project)
    assert pushed.returncode == 0, pushed.stderr
    assert any((project.parent / "deepmolm-dvc-storage").rglob("*")), "the default remote is beside the repository"
    model = project / "models" / "stage2" / "model.safetensors"
    before = model.read_bytes()
    shutil.rmtree(project / ".dvc" / "cache")
    shutil.rmtree(project / "models" / "stage2")
    pulled = dvc("pull", cwd=project)
    assert pulled.returncode == 0, pulled.stderr
    assert model.read_bytes() == before
    started = time.perf_counter()
    second = dvc("repro", cwd=project)
    assert second.returncode == 0, second.stderr
    assert ran(second.stdout) == [] and "didn't change, skipping" in second.stdout
    print(f"no-op dvc repro: {time.perf_counter() - started:.1f} s")


def test_a_stage2_param_reruns_stage2_and_what_follows_only(demo, tmp_path):
    project = demo.project
    stage2 = demo.json("reports", "train", "stage2", SUMMARY)
    params = project / "params.yaml"
    text, count = re.subn(r"(stage2:.*?learning_rate: )1\.0e-3", r"\g<1>5.0e-4", params.read_text(), flags=re.S)
    text, split = re.subn(r"(number_head_refit: \{.*?per_view: )false", r"\g<1>true", text, flags=re.S)
    assert count == split == 1
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
    retrained = demo.json("reports", "train", "stage2", SUMMARY)
    assert retrained["run"] != stage2["run"] and retrained["up_to_date"] is False
    # the head split per view: every training example read twice, with both views and from the drawing
    # alone (a molecule without a conformer both times by the drawing's head)
    refitted, molecules = retrained["number_head_refit"], retrained["row_counts"]["train_molecules"]
    assert refitted["slots"] + refitted["number_head_drawing"]["slots"] == 2 * 4 * molecules, refitted
    assert json.loads((project / "models" / "stage2" / "config.json").read_text())["number_head_per_view"]
