"""The Ray Train driver both model families use: connect to Ray, fit a TorchTrainer whose run name
decides where its checkpoints live (so the same command resumes), read the last checkpoint's records,
export its model atomically, and log the run's metrics through dvclive for `dvc exp show` and
`dvc plots`.

What a run trains is the family's (training/deepmolm/launch.py, evaluation/mumo/benchmark.py); how
it runs, resumes and leaves its outputs is here, once.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import shutil
from pathlib import Path

import pyarrow.fs

from deepmolm.config import Params
from deepmolm.runtime import numerics
from deepmolm.training.checkpoints import EXPORT, HISTORY, STATE


def connect(params: Params) -> None:
    """Ray at train.ray_address, or a local one (its dashboard as train.ray_dashboard says); once per
    process. Every worker of the job starts on params.yaml `numerics`' code paths (its runtime_env),
    so what it trains is the same bytes on any processor."""
    import ray

    if not ray.is_initialized():
        local = params.train.ray_address is None and not os.environ.get("RAY_ADDRESS")
        ray.init(address=params.train.ray_address, log_to_driver=True, configure_logging=False,
                 runtime_env=numerics.ray_runtime_env(params.numerics),
                 **({"include_dashboard": params.train.ray_dashboard} if local else {}))


def map_on_ray(params: Params, fn, calls: list[tuple]) -> list:
    """`fn(*call)` for every call as Ray tasks of one CPU each, results in order: the driver's way to
    spread preparation over the cluster the run is about to use."""
    import ray

    connect(params)
    task = ray.remote(num_cpus=1)(fn)
    return ray.get([task.remote(*call) for call in calls])


def fit(params: Params, worker, config: dict, run: str):
    """`worker(config)` on train.scaling's workers as the run `run` under train.runs_dir; a run of
    that name started again resumes from its last checkpoint. Raises the run's error."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    connect(params)
    # Ray Train sends a worker's print to stdout and again through its logger: every [train] line
    # came twice. A Ray started here is the driver's own, so nothing can preempt it: no watcher
    # process (a cluster's, named by train.ray_address or a Jobs API job's RAY_ADDRESS, keeps one).
    # Ray Train reads both in the driver and passes them on; a value set outside wins.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    if params.train.ray_address is None and not os.environ.get("RAY_ADDRESS"):
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    train, scaling = params.train, params.train.scaling
    resources = {"CPU": scaling.cpus_per_worker, **({"GPU": scaling.gpus_per_worker} if scaling.use_gpu else {})}
    trainer = TorchTrainer(
        worker, train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=scaling.workers, use_gpu=scaling.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(name=run, storage_path=train.runs_dir,
                             checkpoint_config=CheckpointConfig(num_to_keep=train.keep_checkpoints),
                             failure_config=FailureConfig(max_failures=train.max_failures)))
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    return result


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line]


def export_model(result, out: Path) -> tuple[list[dict], dict]:
    """Copy the final checkpoint's exported model to `out` (whole or not at all: it is staged beside
    it and renamed); returns the checkpoint's step history and state."""
    out = Path(out)
    with result.checkpoint.as_directory() as directory:
        directory = Path(directory)
        if not (directory / EXPORT).is_dir():
            raise RuntimeError(f"the run's last checkpoint {result.checkpoint.path} holds no exported model")
        history = read_jsonl(directory / HISTORY)
        state = json.loads((directory / STATE).read_text())
        staging = out.with_name(out.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(directory / EXPORT, staging)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return history, state


SUMMARY = "metrics.json"  # dvclive's summary of a metrics directory: what `dvc exp show` lists
PER_STEP = ("loss", "lr", "grad_norm")  # logged as train/<name> at every optimizer step


def log_metrics(directory: Path, history: list[dict], summary: dict, *, epochs: list[dict] = (),
                held_out: list[dict] = ()) -> None:
    """A run's metrics through dvclive, replayed from its last checkpoint's records instead of logged
    as the workers go: a resumed run still has exactly one row per optimizer step. `train/<name>` of
    PER_STEP at every step; `epoch/train_loss` and `holdout/loss` at the step each epoch ended;
    `holdout/loss` also at each step of `held_out` (rows of step and holdout_loss between epochs);
    `summary` (with dvclive's last values) as SUMMARY. Files only: no dvc.yaml, no experiment of
    its own (the stage is one of the pipeline's, and `dvc exp run` records it)."""
    steps, ended = {row["step"]: row for row in history}, {row["step"]: row for row in epochs}
    evaluated = {row["step"]: row["holdout_loss"] for row in [*held_out, *epochs] if row.get("holdout_loss") is not None}
    with _files_only_live()(dir=str(directory), save_dvc_exp=False, dvcyaml=None, report=None) as live:
        for step in sorted(steps.keys() | ended.keys() | evaluated.keys()):
            live.step = step
            for name in PER_STEP if step in steps else ():
                live.log_metric(f"train/{name}", steps[step][name])
            if step in ended:
                live.log_metric("epoch/train_loss", ended[step]["train_loss"])
            if step in evaluated:
                live.log_metric("holdout/loss", evaluated[step])
        live.summary.update(summary)
    (Path(directory) / "plots" / "metrics").mkdir(parents=True, exist_ok=True)  # a declared output, empty without steps


@functools.cache
def _files_only_live():
    """dvclive's Live without its repository integration (`_init_dvc`): nothing here uses it (no
    experiment of its own, no dvc.yaml), and it fails in a Git repository with no commit yet
    (dvclive 3.49: scmrepo's "Empty git repo", which its own error handling does not catch), as a
    fresh `git init` project has."""
    from dvclive import Live

    class FilesOnlyLive(Live):
        def _init_dvc(self) -> None:
            pass

    return FilesOnlyLive


def read_metric(directory: Path, name: str) -> list[tuple[int, float]]:
    """(step, value) of every row dvclive wrote for `name` ("train/loss") under `directory`."""
    path = Path(directory) / "plots" / "metrics" / f"{name}.tsv"
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return [(int(row["step"]), float(row[name.rsplit("/", 1)[-1]])) for row in csv.DictReader(handle, delimiter="\t")]


def write_csv(path: Path, columns: tuple[str, ...], rows: list[dict]) -> None:
    """One row per record, the named columns only (the run log's throughput)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def write_run_file(runs_dir: str, run: str, name: str, content: dict) -> None:
    """Next to the run's checkpoints, on whatever filesystem `runs_dir` names."""
    filesystem, root = pyarrow.fs.FileSystem.from_uri(runs_dir)
    filesystem.create_dir(f"{root}/{run}", recursive=True)
    with filesystem.open_output_stream(f"{root}/{run}/{name}") as handle:
        handle.write(json.dumps(content, indent=2).encode())


def stage_metrics_dir(params: Params, stage: int) -> Path:
    """`<reports_dir>/train/stage<N>/`: a DeepMoLM stage's dvclive directory (`log_metrics`)."""
    return params.paths.reports_dir / "train" / f"stage{stage}"
