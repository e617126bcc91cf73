"""The driver side of training: plan a stage, run it as a Ray Train TorchTrainer, export its model.

The run's name is a digest of everything that decides what is learned (stages.run_name), and its
checkpoints live under `<train.runs_dir>/<name>/`. Ray Train (V2) reloads that directory's checkpoint
list when a run of the same name starts, so running the same command again after a crash or a kill
resumes from the last checkpoint instead of starting over; a worker that dies mid-run is replaced
and the group restarts from the last checkpoint, up to `train.max_failures` times.

Outputs: the exported model in `<models_dir>/stage<N>/` (safetensors, config, tokenizer,
provenance.json) and the metrics in `<reports_dir>/train/stage<N>/`: steps.csv (one row per optimizer
step, for `dvc plots`) and summary.json.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import pyarrow.fs
import pyarrow.parquet as pq

from deepmolm.config import ConfigError, Params
from deepmolm.instructions import EXAMPLES, MANIFEST, instruction_shards, resolve_instruction_set
from deepmolm.train.loop import EXPORT, HISTORY, STATE
from deepmolm.train.stages import PROVENANCE, run_name
from deepmolm.train.strategy import deepspeed_config

STEP_COLUMNS = ("step", "epoch", "loss", "lr", "grad_norm", "samples_per_s", "tokens_per_s", "seconds")
ENCODED_COLUMNS = ["prompt", "response", "image_part", "image_row", "e3fp"]
# Rows per Ray Data block, so per encoding task: small enough that the first batch of an epoch waits
# for one block, not the whole table (one block of 3,301 rows held the first step for 66 s).
ROWS_PER_BLOCK = 64


def stage_paths(params: Params, stage: int, instructions: Path | None, tokenizer: Path | None,
                init: Path | None, out: Path | None) -> dict[str, Path | None]:
    """Defaults: the newest instruction set under paths.instructions_dir; stage 1 uses the tokenizer
    artifact in <models_dir>/tokenizer, stage 2 starts from <models_dir>/stage1 and its tokenizer."""
    models = params.train.models_dir
    if stage == 2:
        init = init or models / "stage1"
    elif init is not None:
        raise ConfigError("stage 1 starts from the preset and train.init's pretrained parts, not from --init")
    paths = {
        "instructions": resolve_instruction_set(instructions or params.paths.instructions_dir),
        "tokenizer": tokenizer or (init if stage == 2 else models / "tokenizer"),
        "init": init,
        "out": out or models / f"stage{stage}",
        "metrics": params.paths.reports_dir / "train" / f"stage{stage}",
    }
    return {key: None if path is None else Path(path).resolve() for key, path in paths.items()}  # workers have their own cwd


def plan_stage(params: Params, stage: int, paths: dict) -> dict:
    """Rows, steps and the run's name, decided on the driver before any worker starts."""
    train, stage_params = params.train, params.train.stage(stage)
    if not Path(paths["tokenizer"]).is_dir():
        raise FileNotFoundError(f"no tokenizer at {paths['tokenizer']} (make one with `deepmolm model tokenizer`)")
    instruction_shards(paths["instructions"])  # the drawings must be there before any worker starts
    if stage == 2 and not (paths["init"] / "config.json").is_file():
        raise FileNotFoundError(f"stage 2 starts from stage 1's exported model; none at {paths['init']}")
    rows = pq.read_table(paths["instructions"] / EXAMPLES, columns=["split"], filters=_row_filter(params, stage)).num_rows
    per_worker = rows // train.scaling.workers
    steps_per_epoch = per_worker // train.micro_batch_size // train.grad_accum_steps
    if steps_per_epoch == 0:
        raise ConfigError(f"{rows} examples (splits {train.splits}, tasks {stage_params.tasks}) are not one step for "
                          f"{train.scaling.workers} workers x micro_batch_size {train.micro_batch_size} x "
                          f"grad_accum_steps {train.grad_accum_steps}")
    manifest = json.loads((paths["instructions"] / MANIFEST).read_text())
    name = run_name(stage, params, manifest.get("id", paths["instructions"].name), paths["tokenizer"], paths["init"])
    bf16 = train.precision == "bf16" or (train.precision == "auto" and train.scaling.use_gpu)
    local = None if "://" in train.runs_dir else str(Path(train.runs_dir) / name)
    return {
        "run": name, "rows": rows, "steps_per_epoch": steps_per_epoch,
        "total_steps": stage_params.max_steps or stage_params.epochs * steps_per_epoch,
        "bf16": bf16, "instructions": str(paths["instructions"]), "local_run_dir": local,
        "deepspeed_config": deepspeed_config(params.train, bf16) if train.strategy == "deepspeed" else None,
    }


def _row_filter(params: Params, stage: int) -> list[tuple]:
    rows = [("task", "in", list(params.train.stage(stage).tasks))]
    if params.train.splits is not None:
        rows.append(("split", "in", list(params.train.splits)))
    return rows


def up_to_date(out: Path, run: str) -> bool:
    provenance = Path(out) / PROVENANCE
    return provenance.is_file() and json.loads(provenance.read_text()).get("run") == run


def run_stage(params: Params, stage: int, *, instructions: Path | None = None, tokenizer: Path | None = None,
              init: Path | None = None, out: Path | None = None) -> dict:
    """Train one stage (or find it already trained) and return its summary."""
    paths = stage_paths(params, stage, instructions, tokenizer, init, out)
    plan = plan_stage(params, stage, paths)
    summary_path = paths["metrics"] / "summary.json"
    if up_to_date(paths["out"], plan["run"]) and summary_path.is_file():
        return {**json.loads(summary_path.read_text()), "up_to_date": True}
    _write_run_file(params.train.runs_dir, plan["run"], "plan.json", plan)
    if plan["deepspeed_config"] is not None:
        _write_run_file(params.train.runs_dir, plan["run"], "deepspeed_config.json", plan["deepspeed_config"])
    started = time.perf_counter()
    result = _fit(params, stage, paths, plan)
    with result.checkpoint.as_directory() as directory:
        directory = Path(directory)
        history = [json.loads(line) for line in (directory / HISTORY).read_text().splitlines() if line]
        state = json.loads((directory / STATE).read_text())
        if not (directory / EXPORT).is_dir():
            raise RuntimeError(f"the run's last checkpoint {result.checkpoint.path} holds no exported model")
        staging = paths["out"].with_name(paths["out"].name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(directory / EXPORT, staging)
    shutil.rmtree(paths["out"], ignore_errors=True)
    staging.rename(paths["out"])
    summary = {
        "stage": stage, "run": plan["run"], "strategy": params.train.strategy, "workers": params.train.scaling.workers,
        "rows": plan["rows"], "steps": state["step"], "total_steps": plan["total_steps"],
        "first_loss": history[0]["loss"] if history else None, "last_loss": history[-1]["loss"] if history else None,
        "resumed_from": state["resumed_from"], "seconds": round(time.perf_counter() - started, 1),
        "model": str(paths["out"]), "checkpoint": result.checkpoint.path, "instructions": plan["instructions"],
        "precision": "bf16" if plan["bf16"] else "fp32", "up_to_date": False,
    }
    write_metrics(paths["metrics"], history, summary)
    return summary


def write_metrics(directory: Path, history: list[dict], summary: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "steps.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=STEP_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)
    (directory / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def _write_run_file(runs_dir: str, run: str, name: str, content: dict) -> None:
    """Next to the run's checkpoints, on whatever filesystem `runs_dir` names."""
    filesystem, root = pyarrow.fs.FileSystem.from_uri(runs_dir)
    filesystem.create_dir(f"{root}/{run}", recursive=True)
    with filesystem.open_output_stream(f"{root}/{run}/{name}") as handle:
        handle.write(json.dumps(content, indent=2).encode())


def _fit(params: Params, stage: int, paths: dict, plan: dict):
    import ray
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from deepmolm.model.presets import model_config
    from deepmolm.train.loop import train_worker
    from deepmolm.train.ray_data import encode_rows

    train = params.train
    if not ray.is_initialized():
        ray.init(address=train.ray_address, log_to_driver=True, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False  # the loop logs its own progress
    spec = model_config(params).encoder_spec()
    # The filtered rows are read on the driver (instruction tables are text and small identifiers) and
    # handed to Ray Data, which encodes them in tasks and splits them evenly over the workers.
    # Reading through ray.data.read_parquet needs a free CPU for its file listing, which a machine
    # whose cores all went to training workers never has.
    table = pq.read_table(paths["instructions"] / EXAMPLES, columns=ENCODED_COLUMNS, filters=_row_filter(params, stage))
    blocks = [table.slice(start, ROWS_PER_BLOCK) for start in range(0, table.num_rows, ROWS_PER_BLOCK)]
    dataset = ray.data.from_arrow(blocks).map_batches(
        encode_rows, batch_size=32, num_cpus=train.loader_cpus, fn_kwargs={
            "shards": str(instruction_shards(paths["instructions"])), "tokenizer_dir": str(paths["tokenizer"]), "image_size": spec.image_size,
            "image_tokens": spec.tokens, "max_length": params.model.max_length})
    scaling = train.scaling
    resources = {"CPU": scaling.cpus_per_worker, **({"GPU": scaling.gpus_per_worker} if scaling.use_gpu else {})}
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"params": params, "stage": stage, "plan": plan, "tokenizer": str(paths["tokenizer"]),
                           "init": str(paths["init"]) if paths["init"] else None},
        scaling_config=ScalingConfig(num_workers=scaling.workers, use_gpu=scaling.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=plan["run"], storage_path=train.runs_dir,
                             checkpoint_config=CheckpointConfig(num_to_keep=train.keep_checkpoints),
                             failure_config=FailureConfig(max_failures=train.max_failures)),
        datasets={"train": dataset},
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    return result
