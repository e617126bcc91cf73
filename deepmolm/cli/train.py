"""`deepmolm train`: run a stage here or on a Ray cluster, or submit it to one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from deepmolm.cli.common import Common, Exit, InstructionsOpt, PrefectOpt, command, stderr, stdout

train_app = typer.Typer(
    help="Stage 1 (alignment) and stage 2 (instruction tuning) on Ray Train, locally or on a Ray cluster.",
    no_args_is_help=True,
)


StageOpt = Annotated[int, typer.Option("--stage", min=1, max=2, help="1: align the projector; 2: instruction tuning.")]


@command(train_app, "run")
def train_run(
    common: Common,
    stage: StageOpt,
    instructions: InstructionsOpt = None,
    tokenizer: Annotated[Path | None, typer.Option(help="tokenizer directory (default: <models_dir>/tokenizer; stage 2: the stage 1 model's).")] = None,
    init: Annotated[Path | None, typer.Option(help="stage 2 only: the model to start from (default: <models_dir>/stage1).")] = None,
    out: Annotated[Path | None, typer.Option(help="where the exported model goes (default: <models_dir>/stage<N>).")] = None,
    prefect: PrefectOpt = False,
) -> None:
    """Train one stage on Ray Train (train.ray_address, or a local Ray). Re-running the same command
    resumes from the run's last checkpoint; a finished run is not trained again."""
    from deepmolm.training.deepmolm.launch import run_stage

    with common.errors():
        cfg = common.params
        paths = {"instructions": instructions, "tokenizer": tokenizer, "init": init, "out": out}
        from ray.train import TrainingFailedError

        try:
            summary = common.run(prefect, "flows.train:run_train", [stage], paths=paths,
                                 inline=lambda: [run_stage(cfg, stage, **paths)])[0]
        except TrainingFailedError as exc:  # the workers failed more than train.max_failures times
            raise Exit(1, f"{str(exc).strip().splitlines()[0].rstrip(':')} (the workers' tracebacks are above)") from None

    def render(s: dict) -> None:
        state = "up to date" if s["up_to_date"] else f"trained in {s['seconds']} s"
        stdout.print(f"stage {s['stage']} ({s['run']}): {s['steps']} steps, loss {s['first_loss']:.4f} -> "
                     f"{s['last_loss']:.4f}, {state}; model in {s['model']}")

    common.emit(summary, render)


@command(train_app, "encoder")
def train_encoder(
    common: Common,
    shards: Annotated[Path | None, typer.Option(help="a chebi20 shard version, or their directory (default: <shards_dir>/chebi20): "
                                                     "which molecules are trained on and which are evaluated.")] = None,
    out: Annotated[Path | None, typer.Option(help="where the encoder goes (default: <models_dir>/encoder).")] = None,
    if_used: Annotated[bool, typer.Option("--if-used", help="only when train.init.encoder is --out (else a note there): "
                                                            "the DVC stage's way to train nothing for the GPU recipes.")] = False,
    prefect: PrefectOpt = False,
) -> None:
    """Pretrain the DeepEncoder on drawings (Ray Train): each token learns to count the atoms drawn
    under it (train.encoder_pretrain). `train.init.encoder` then starts stage 1 from it."""
    from deepmolm.training.encoder.launch import pretrain_encoder

    with common.errors():
        summary = common.run(prefect, "flows.pretrain_encoder:run_pretrain_encoder", shards, out, if_used,
                             inline=lambda: pretrain_encoder(common.params, shards=shards, out=out, if_used=if_used))

    def render(s: dict) -> None:
        if s.get("skipped"):
            stdout.print(f"encoder not pretrained: {s['reason']}")
            return
        before, after = s["held_out_before"] or {}, s["held_out_after"] or {}
        stdout.print(f"encoder pretrained on {s['molecules']:,} molecules in {s['steps']} steps; held-out heavy-atom "
                     f"count MAE {before.get('heavy_atoms_mae', float('nan')):.2f} -> "
                     f"{after.get('heavy_atoms_mae', float('nan')):.2f} (mean baseline "
                     f"{after.get('heavy_atoms_mae_mean_baseline', float('nan')):.2f}); encoder in {s['model']}")

    common.emit(summary, render)


@command(train_app, "submit")
def train_submit(
    common: Common,
    address: Annotated[str, typer.Option(help="the Ray cluster's dashboard (Jobs API), e.g. http://HEAD:8265.")],
    stage: StageOpt,
    wait: Annotated[bool, typer.Option(help="stream the job's logs until it ends; exit 1 unless it succeeded.")] = True,
) -> None:
    """Submit `deepmolm train run --stage N` to a Ray cluster through the Jobs API, with this project
    as the job's working_dir. Paths in params are the cluster's (shared storage)."""
    from deepmolm.training.submit import submit_training

    with common.errors():
        cfg = common.params
        project = common.params_file.resolve().parent
        log = (lambda line: stderr.print(line, highlight=False, markup=False)) if common.as_json else \
            (lambda line: stdout.print(line, highlight=False, markup=False))
        summary = submit_training(address, stage, project, common.params_file.name, list(common.overrides), cfg.train.cluster,
                                  wait=wait, log=log)
    common.emit(summary, lambda s: stdout.print(f"job {s['job_id']}: {s['status']}"))
    if wait and not summary["succeeded"]:
        raise typer.Exit(1)
