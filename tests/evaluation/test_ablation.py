"""The ablation grid: its cells, its table against the paper's directions, and a real DVC queue."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from deepmolm.config import AblationParams, ConfigError, load_params
from deepmolm.evaluation.ablation import (
    Cell,
    _shown,
    cells,
    direction_rows,
    link_external_dependencies,
    markdown,
    run_grid,
    summarize,
    table_rows,
)

ROOT = Path(__file__).resolve().parents[2]


def _grid(**changes) -> list[Cell]:
    spec = {"variants": ["fusion", "concat", "linear", "fusion_zero_e3fp"], "without_stage1": ["fusion"],
            "seeds": [0, 1], "out": "reports/ablation", **changes}
    return cells(AblationParams(**spec))


def test_cells_cover_every_variant_and_seed_seed_by_seed():
    grid = _grid()
    assert len(grid) == 10 and len({cell.name for cell in grid}) == 10
    assert [cell.seed for cell in grid] == [0] * 5 + [1] * 5  # a grid stopped half-way has every row once
    skipped = [cell for cell in grid if not cell.stage1]
    assert [cell.name for cell in skipped] == ["ablation-fusion-nostage1-s0", "ablation-fusion-nostage1-s1"]
    assert skipped[0].overrides == ("model.fusion_variant=fusion", "train.seed=0", "train.stage1.epochs=0")
    assert "train.stage1.epochs=0" not in _grid()[0].overrides
    assert {cell.row for cell in grid} == {"fusion", "concat", "linear", "fusion_zero_e3fp", "fusion without stage 1"}


def test_the_grid_in_params_yaml_is_valid_and_duplicates_are_refused():
    params = load_params(ROOT / "params.yaml")
    assert len(cells(params.eval.ablation)) == 10
    with pytest.raises(ConfigError, match="seeds"):
        load_params(ROOT / "params.yaml", ["eval.ablation.seeds=[0, 0]"])
    with pytest.raises(ConfigError, match="fusion_variant|variants"):
        load_params(ROOT / "params.yaml", ["eval.ablation.variants=[fusion, attention]"])


def test_skipping_stage1_is_a_stage1_setting_only():
    params = load_params(ROOT / "params.yaml", ["train.stage1.epochs=0"])
    assert params.train.stage1.epochs == 0
    with pytest.raises(ConfigError, match="stage 2 would train nothing"):
        load_params(ROOT / "params.yaml", ["train.stage2.epochs=0"])
    with pytest.raises(ConfigError, match="max_steps"):
        load_params(ROOT / "params.yaml", ["train.stage1.epochs=0", "train.stage1.max_steps=5"])


def _metrics(meteor: float, rouge: float, mw: float = 100.0) -> dict:
    return {"model": {"captions": {"bleu2": meteor - 0.05, "bleu4": meteor - 0.1, "rougeL": rouge, "meteor": meteor,
                                   "degenerate": 0.1},
                      "properties": {"mw": {"mae": mw}, "logp": {"mae": 2.0}, "tpsa": {"mae": None}}}}


def _files(metrics: dict[str, dict], steps=None) -> dict[str, dict[str, dict]]:
    """As run_grid returns them: each experiment's metrics files by path."""
    steps = list(steps) if steps is not None else [45] * len(metrics)
    return {name: {"reports/eval/metrics.json": {**m, "dataset": {"eval_molecules": 150, "eval_splits": ["test"]}},
                   "reports/train/stage1/metrics.json": {"steps": first},
                   "reports/train/stage2/metrics.json": {"steps": 352}}
            for (name, m), first in zip(metrics.items(), steps)}


def test_summary_means_spread_and_the_papers_directions():
    grid = _grid()
    by_row = {"fusion": (0.30, 0.36), "concat": (0.25, 0.34), "linear": (0.27, 0.35),
              "fusion_zero_e3fp": (0.26, 0.30), "fusion without stage 1": (0.28, 0.35)}
    metrics = {cell.name: _metrics(by_row[cell.row][0] + 0.004 * cell.seed, by_row[cell.row][1], mw=100 + cell.seed)
               for cell in grid}
    summary = summarize(grid, _files(metrics, steps=(0 if "nostage1" in name else 45 for name in metrics)))
    fusion = next(row for row in summary["rows"] if row["row"] == "fusion")
    assert fusion["stats"]["meteor"] == pytest.approx({"mean": 0.302, "min": 0.30, "max": 0.304, "n": 2})
    assert fusion["stats"]["tpsa"] is None and fusion["stats"]["complexity"] is None
    assert fusion["steps"] == [[45, 352], [45, 352]]
    assert next(row for row in summary["rows"] if not row["stage1"])["steps"] == [[0, 352], [0, 352]]
    assert summary["eval_molecules"] == 150
    verdicts = {check["id"]: check["verdict"] for check in summary["directions"]}
    # 0.02 METEOR lower without stage 1: the paper's sign, far from its 10 points
    assert verdicts["no_stage1"] == "disagrees"
    assert verdicts["concat_vs_linear"] == "agrees"
    assert verdicts["no_e3fp"] == "agrees"
    assert verdicts["fusion_best"] == "agrees"
    table = table_rows(summary)
    assert table[0][:2] == ["fusion", "0, 1"] and table[0][5] == "0.302 (0.300-0.304)"
    assert table[0][6] == "0.100 (0.100-0.100)"
    assert table[0][7] == "100.5 (100.0-101.0)" and table[0][9] == "-"
    assert "| fusion without stage 1 | 0, 1 |" in markdown(summary)
    assert direction_rows(summary)[0][1] == "fusion without stage 1: meteor 0.020 lower than fusion (seed spread 0.004)"

    metrics["ablation-linear-s1"] = _metrics(0.20, 0.35)  # linear's seeds now straddle concat
    closer = summarize(grid, _files(metrics))
    assert {check["id"]: check["verdict"] for check in closer["directions"]}["concat_vs_linear"] == \
        "disagrees within the seed spread"
    assert "seed spread" in direction_rows(closer)[1][1]


def test_missing_cells_are_not_run_directions():
    grid = _grid(variants=["fusion"], without_stage1=[])
    summary = summarize(grid, _files({cell.name: _metrics(0.3, 0.3) for cell in grid}))
    assert {check["id"]: check["verdict"] for check in summary["directions"]}["concat_vs_linear"] == "not run"


def test_experiment_states_a_running_one_is_not_a_result():
    from deepmolm.evaluation.ablation import _finished, experiment_states

    def experiment(name, state):
        return {"name": name, "executor": state and {"state": state},
                "revs": [{"name": name, "error": None, "data": {"metrics": {"m.json": {"data": {"x": 1}}}}}]}

    shown = [{"rev": "workspace", "experiments": None},
             {"rev": "abc", "experiments": [experiment("done", "success"), experiment("old", None),
                                            experiment("busy", "running"), experiment("waiting", "queued"),
                                            experiment("broken", "failed")]}]
    states = experiment_states(shown)
    assert {name: state for name, (state, _) in states.items()} == {
        "done": "success", "old": "success", "busy": "running", "waiting": "queued", "broken": "failed"}
    assert [name for name in states if _finished(states[name], "m.json")] == ["done", "old"]
    assert not _finished(states["done"], "other.json") and not _finished(None, "m.json")


def test_external_dependencies_are_linked_beside_the_experiment_copies(tmp_path):
    project, shared = tmp_path / "project", tmp_path / "shared"
    (shared / "data").mkdir(parents=True)
    project.mkdir()
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "a": {"cmd": "true", "deps": ["../shared/data", "local.txt"]}, "b": {"cmd": "true"}}}))
    [link] = link_external_dependencies(project)
    assert link == project / ".dvc/tmp/exps/shared" and link.resolve() == shared.resolve()
    assert link_external_dependencies(project) == [link]  # again: the same link
    link.unlink()
    link.mkdir()
    with pytest.raises(FileExistsError, match="in the way"):
        link_external_dependencies(project)


STAGE = """
import json, yaml
p = yaml.safe_load(open("params.yaml"))
data = open("../ext/corpus.txt").read()
meteor = {"fusion": 0.3, "linear": 0.25}[p["model"]["fusion_variant"]] + 0.01 * p["train"]["seed"] + 0 * len(data)
json.dump({"model": {"captions": {"meteor": meteor, "bleu2": 0.2, "bleu4": 0.1, "rougeL": 0.3}, "properties": {}}},
          open("metrics.json", "w"))
"""


@pytest.mark.timeout(300)
def test_run_grid_queues_dvc_experiments_and_a_rerun_queues_nothing(tmp_path):
    """A real Git + DVC project with a dependency outside it, run through `dvc queue` by run_grid."""
    (tmp_path / "ext").mkdir()
    (tmp_path / "ext" / "corpus.txt").write_text("molecules\n")
    project = tmp_path / "project"
    project.mkdir()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}

    def sh(*args):
        subprocess.run(args, cwd=project, env=env, check=True, capture_output=True)

    (project / "stage.py").write_text(textwrap.dedent(STAGE))
    (project / "params.yaml").write_text("model: {fusion_variant: fusion}\ntrain: {seed: 0}\n")
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"report": {
        "cmd": f"{sys.executable} stage.py", "deps": ["stage.py", "../ext/corpus.txt"],
        "params": ["model.fusion_variant", "train.seed"], "metrics": [{"metrics.json": {"cache": False}}]}}}))
    sh("git", "init", "-q")
    sh("dvc", "init", "-q")
    sh("git", "add", ".")
    sh("git", "commit", "-qm", "init")
    grid = [Cell(f"t-{variant}-s{seed}", variant, variant, True, seed)
            for seed in (0, 1) for variant in ("fusion", "linear")]
    lines = []
    old_path = os.environ["PATH"]
    os.environ["PATH"] = env["PATH"]
    try:
        results = run_grid(project, grid, metrics_file="metrics.json", echo=lines.append)
        assert [results[cell.name]["metrics.json"]["model"]["captions"]["meteor"] for cell in grid] == \
            pytest.approx([0.3, 0.25, 0.31, 0.26])
        assert sum(line.startswith("queued") for line in lines) == 4
        assert lines[-1].startswith("4 experiments in")
        lines.clear()
        again = run_grid(project, grid, metrics_file="metrics.json", echo=lines.append)
    finally:
        os.environ["PATH"] = old_path
    assert again == results and not lines  # every cell finished: nothing queued
    assert subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=project, env=env,
                          capture_output=True, text=True).stdout == ""  # the workspace is left as it was


def test_a_dvc_exp_show_that_blocks_is_ended_and_asked_again(tmp_path, monkeypatch):
    """`dvc exp show` can block for good (seen once in CI; DVC's tracker reports it on the experiment
    lock, treeverse/dvc#8762): here the first call blocks (a `dvc` on PATH that sleeps once, then runs
    the real one) and the answer still comes."""
    project = tmp_path / "project"
    project.mkdir()
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    for command in (["git", "init", "-q"], ["git", "commit", "-q", "--allow-empty", "-m", "init"],
                    [str(Path(sys.executable).with_name("dvc")), "init", "-q"]):
        subprocess.run(command, cwd=project, env=env, check=True, capture_output=True)
    shim = tmp_path / "bin" / "dvc"
    shim.parent.mkdir()
    shim.write_text(f"#!/bin/sh\nif [ ! -e {tmp_path}/blocked ]; then touch {tmp_path}/blocked; exec sleep 600; fi\n"
                    f"exec {Path(sys.executable).with_name('dvc')} \"$@\"\n")
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim.parent}{os.pathsep}{os.environ['PATH']}")
    started = time.monotonic()
    shown = _shown(project, "HEAD", timeout_s=3)
    assert (tmp_path / "blocked").exists() and time.monotonic() - started < 60
    assert json.loads(shown)[0]["rev"] == "workspace"
