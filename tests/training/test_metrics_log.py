"""A run's metrics through dvclive (training/driver.py): what `dvc exp show` and `dvc plots` read."""

from __future__ import annotations

import json

from deepmolm.training.driver import SUMMARY, log_metrics, read_metric


def history(steps: int) -> list[dict]:
    return [{"step": s, "loss": 5.0 - s / 10, "lr": 1e-3, "grad_norm": 1.5, "samples_per_s": 9.0} for s in range(1, steps + 1)]


def test_one_row_per_step_the_epochs_at_their_last_step_and_the_summary(tmp_path):
    epochs = [{"epoch": 0, "step": 3, "train_loss": 4.8, "holdout_loss": 4.9},
              {"epoch": 1, "step": 6, "train_loss": 4.5, "holdout_loss": 4.6}]
    log_metrics(tmp_path, history(6), {"stage": 2, "steps": 6, "holdout_loss": 4.6}, epochs=epochs)
    assert read_metric(tmp_path, "train/loss") == [(s, 5.0 - s / 10) for s in range(1, 7)]
    assert [step for step, _ in read_metric(tmp_path, "train/grad_norm")] == list(range(1, 7))
    assert read_metric(tmp_path, "epoch/train_loss") == [(3, 4.8), (6, 4.5)]
    assert read_metric(tmp_path, "holdout/loss") == [(3, 4.9), (6, 4.6)]
    summary = json.loads((tmp_path / SUMMARY).read_text())
    assert {key: summary[key] for key in ("stage", "steps", "holdout_loss")} == {"stage": 2, "steps": 6, "holdout_loss": 4.6}
    assert summary["train"]["loss"] == 5.0 - 6 / 10 and summary["step"] == 6
    assert read_metric(tmp_path, "train/samples_per_s") == [], "the machine's speed is the run log's, not a metric"
    assert not (tmp_path / "dvc.yaml").exists(), "the pipeline's dvc.yaml declares these files"


def test_logging_again_replaces_the_rows_and_a_stage_without_held_out_rows_has_no_held_out_curve(tmp_path):
    log_metrics(tmp_path, history(8), {"steps": 8}, epochs=[{"epoch": 0, "step": 8, "train_loss": 4.4, "holdout_loss": 4.5}])
    log_metrics(tmp_path, history(4), {"steps": 4}, epochs=[{"epoch": 0, "step": 4, "train_loss": 4.7, "holdout_loss": None}])
    assert [step for step, _ in read_metric(tmp_path, "train/loss")] == [1, 2, 3, 4], "no rows left from the earlier run"
    assert read_metric(tmp_path, "epoch/train_loss") == [(4, 4.7)]
    assert read_metric(tmp_path, "holdout/loss") == []
    assert json.loads((tmp_path / SUMMARY).read_text())["steps"] == 4


def test_two_loggings_of_the_same_records_are_the_same_bytes(tmp_path):
    for directory in (tmp_path / "a", tmp_path / "b" / "deeper"):
        log_metrics(directory, history(5), {"stage": 1}, epochs=[{"epoch": 0, "step": 5, "train_loss": 4.6, "holdout_loss": 4.7}])
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 6  # three step metrics, two epoch metrics, the summary
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / "deeper" / f).read_bytes() for f in files)


def test_a_git_repository_without_a_commit_is_no_obstacle(tmp_path, monkeypatch):
    """A project just made with `git init` (as the end-to-end test's copies are): dvclive's own
    repository checks would fail there with "Empty git repo"."""
    import subprocess

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    monkeypatch.chdir(tmp_path)
    log_metrics(tmp_path / "reports" / "train" / "stage1", history(3), {"stage": 1})
    assert [step for step, _ in read_metric(tmp_path / "reports" / "train" / "stage1", "train/loss")] == [1, 2, 3]
