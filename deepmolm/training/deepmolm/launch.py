"""A DeepMoLM stage on the driver: plan it (rows, steps, name), run it through training/driver.py, export its model.

The run's name is a digest of everything that decides what is learned (stages.run_name), and its
checkpoints live under `<train.runs_dir>/<name>/`. Ray Train (V2) reloads that directory's checkpoint
list when a run of the same name starts, so running the same command again after a crash or a kill
resumes from the last checkpoint instead of starting over; a worker that dies mid-run is replaced
and the group restarts from the last checkpoint, up to `train.max_failures` times.

Outputs: the exported model in `<models_dir>/stage<N>/` (safetensors, config, tokenizer,
provenance.json) and the metrics in `<reports_dir>/train/stage<N>/`, written by dvclive
(training/driver.py's `log_metrics`): loss, lr and grad norm per optimizer step, training and
held-out loss per epoch, and the stage's summary as metrics.json.
"""

from __future__ import annotations

import functools
import json
import shutil
import time
from pathlib import Path

from deepmolm.config import ConfigError, Params
from deepmolm.data.instructions import instruction_shards, resolve_instruction_set
from deepmolm.models.deepmolm.weights import WeightsError
from deepmolm.runtime import numerics
from deepmolm.runtime.run_log import log_run, portable_path
from deepmolm.store.versions import MANIFEST
from deepmolm.training.checkpoints import PROVENANCE
from deepmolm.training.deepmolm.rows import stage_rows
from deepmolm.training.deepmolm.stages import INIT_PARTS, check_weights, run_name
from deepmolm.training.driver import (
    SUMMARY,
    export_model,
    fit,
    log_metrics,
    map_on_ray,
    stage_metrics_dir,
    write_csv,
    write_run_file,
)
from deepmolm.training.strategy import deepspeed_config

THROUGHPUT_COLUMNS = ("step", "samples_per_s", "tokens_per_s", "seconds")  # the run log's: the machine's speed
RUN_FACTS = ("seconds", "checkpoint", "resumed_from")  # of this run, not of its inputs: the run log's


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
        "metrics": stage_metrics_dir(params, stage),
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
    from deepmolm.models.deepmolm.presets import model_config
    from deepmolm.models.deepmolm.tokenizer import load_tokenizer

    selected = stage_rows(params, stage, paths["instructions"], load_tokenizer(paths["tokenizer"]),
                          model_config(params).encoder_spec().tokens)
    rows = selected["counts"]["train"]
    per_worker = rows // train.scaling.workers
    steps_per_epoch = per_worker // train.micro_batch_size // train.grad_accum_steps
    if steps_per_epoch == 0:
        raise ConfigError(f"{rows} training examples (splits {train.splits}, tasks {stage_params.tasks}, "
                          f"train.holdout and too long ones left out) are not one step for "
                          f"{train.scaling.workers} workers x micro_batch_size {train.micro_batch_size} x "
                          f"grad_accum_steps {train.grad_accum_steps}")
    manifest = json.loads((paths["instructions"] / MANIFEST).read_text())
    name = run_name(stage, params, manifest.get("id", paths["instructions"].name), paths["tokenizer"], paths["init"])
    bf16 = train.precision == "bf16" or (train.precision == "auto" and train.scaling.use_gpu)
    local = None if "://" in train.runs_dir else str(Path(train.runs_dir) / name)
    return {
        "run": name, "rows": rows, "row_counts": selected["counts"], "selected_rows": selected,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": stage_params.max_steps or stage_params.epochs * steps_per_epoch,
        "bf16": bf16, "instructions": str(paths["instructions"]), "local_run_dir": local,
        # what the stage started from: stage 1's export, or stage 1's pretrained parts (train.init)
        "provenance": {"instructions": portable_path(paths["instructions"]),
                       "init": portable_path(paths["init"]) if paths["init"] else
                       ({part: portable_path(getattr(train.init, part)) for part in INIT_PARTS
                         if getattr(train.init, part) is not None} or None)},
        "deepspeed_config": deepspeed_config(params.train, bf16) if train.strategy == "deepspeed" else None,
    }


def prepare_drawings(params: Params, instructions: Path) -> Path:
    """The drawing store the workers read (built on the Ray cluster unless an earlier run left it):
    shrinking every drawing once here costs what one decode per molecule and loader process did."""
    from deepmolm.models.deepmolm.drawing_store import build_drawings
    from deepmolm.models.deepmolm.presets import model_config

    size = model_config(params).encoder_spec().image_size
    return build_drawings(instruction_shards(instructions), size, params.paths.cache_dir / "drawings",
                          map_calls=functools.partial(map_on_ray, params)).resolve()


def up_to_date(out: Path, run: str) -> bool:
    provenance = Path(out) / PROVENANCE
    return provenance.is_file() and json.loads(provenance.read_text()).get("run") == run


def run_stage(params: Params, stage: int, *, instructions: Path | None = None, tokenizer: Path | None = None,
              init: Path | None = None, out: Path | None = None) -> dict:
    """Train one stage (or find it already trained) and return its summary."""
    paths = stage_paths(params, stage, instructions, tokenizer, init, out)
    plan = plan_stage(params, stage, paths)
    summary_path = paths["metrics"] / SUMMARY
    if up_to_date(paths["out"], plan["run"]) and summary_path.is_file():
        return {**json.loads(summary_path.read_text()), "up_to_date": True}
    selected = plan.pop("selected_rows")
    if stage == 1 and any(getattr(params.train.init, part) for part in INIT_PARTS):  # before a GPU hour is spent
        from deepmolm.models.deepmolm.tokenizer import load_tokenizer

        report = check_weights(params, load_tokenizer(paths["tokenizer"]))
        if report["problems"]:
            raise WeightsError(f"train.init does not fit the model (`deepmolm model check-weights` lists all): "
                               f"{'; '.join(report['problems'][:3])}")
    if plan["total_steps"] == 0:
        return _untrained(params, stage, plan, paths)
    plan["drawings"] = str(prepare_drawings(params, paths["instructions"]))
    write_run_file(params.train.runs_dir, plan["run"], "plan.json", plan)
    if plan["deepspeed_config"] is not None:
        write_run_file(params.train.runs_dir, plan["run"], "deepspeed_config.json", plan["deepspeed_config"])
    started = time.perf_counter()
    from deepmolm.training.deepmolm.loop import train_worker

    result = fit(params, train_worker, {"params": params, "stage": stage, "plan": plan, "tokenizer": str(paths["tokenizer"]),
                                        "init": str(paths["init"]) if paths["init"] else None,
                                        "rows": {part: selected[part] for part in ("train", "holdout")}}, plan["run"])
    history, state = export_model(result, paths["out"])
    summary = {
        "stage": stage, "run": plan["run"], "strategy": params.train.strategy, "workers": params.train.scaling.workers,
        "rows": plan["rows"], "row_counts": plan["row_counts"], "steps": state["step"],
        "total_steps": plan["total_steps"],
        "first_loss": history[0]["loss"] if history else None, "last_loss": history[-1]["loss"] if history else None,
        "holdout_loss": state["epochs"][-1]["holdout_loss"] if state.get("epochs") else None,
        "number_head_refit": state.get("number_head_refit"),  # its slots, L1 before / after (number_head.py)
        "resumed_from": state["resumed_from"], "seconds": round(time.perf_counter() - started, 1),
        "model": portable_path(paths["out"]), "checkpoint": result.checkpoint.path,
        "instructions": plan["provenance"]["instructions"],
        "precision": "bf16" if plan["bf16"] else "fp32", "up_to_date": False,
    }
    # what the inputs decide; when, how long and what was resumed are the run log's
    log_metrics(paths["metrics"], history, {key: value for key, value in summary.items() if key not in RUN_FACTS},
                epochs=state.get("epochs", []))
    timing = params.paths.logs_dir / "train" / plan["run"]
    write_csv(timing / "throughput.csv", THROUGHPUT_COLUMNS, history)
    log_run(params.paths.logs_dir, "train", paths["out"], stage=stage, run=plan["run"], throughput=str(timing),
            numerics=numerics.ray_runtime_env(params.numerics)["env_vars"], **{key: summary[key] for key in RUN_FACTS})
    return summary


def _untrained(params: Params, stage: int, plan: dict, paths: dict) -> dict:
    """Stage 1 skipped (`train.stage1.epochs` 0, the paper's "without stage 1" ablation): the stage's
    starting model exported as it is, so stage 2 starts from the random (or `train.init`) weights
    through the same path as always. No Ray run; the metrics directory holds the summary and an
    empty curve."""
    from deepmolm.models.deepmolm.tokenizer import load_tokenizer
    from deepmolm.training.deepmolm.loop import save_export
    from deepmolm.training.deepmolm.stages import initial_model

    out = paths["out"]
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    tokenizer = load_tokenizer(paths["tokenizer"])
    save_export(initial_model(params, stage, tokenizer, paths["init"]), tokenizer, {"plan": plan, "stage": stage},
                {"step": 0}, staging)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    summary = {
        "stage": stage, "run": plan["run"], "strategy": params.train.strategy, "workers": params.train.scaling.workers,
        "rows": plan["rows"], "row_counts": plan["row_counts"], "steps": 0, "total_steps": 0,
        "first_loss": None, "last_loss": None, "holdout_loss": None, "model": portable_path(out),
        "instructions": plan["provenance"]["instructions"], "precision": "bf16" if plan["bf16"] else "fp32",
        "up_to_date": False, "skipped": True,
    }
    log_metrics(paths["metrics"], [], summary)
    log_run(params.paths.logs_dir, "train", out, stage=stage, run=plan["run"], seconds=0.0, checkpoint=None,
            resumed_from=None, skipped=True)
    return summary
