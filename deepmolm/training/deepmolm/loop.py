"""The training loop every Ray Train worker runs (`TorchTrainer(train_loop_per_worker=train_worker)`).

Every worker gets the same training rows from the driver (train/rows.py) and takes its share of
each epoch's seeded permutation of them (data.epoch_batches: a global shuffle per epoch, grouped by
length, the same for a given seed, resumable at any batch), encoded and padded by a torch DataLoader
in the worker; each batch's loss is weighted by its label tokens (data.token_weight).
It takes `grad_accum_steps` micro-batches per optimizer step and all-reduces the step's loss,
samples and tokens so rank 0 records the global figures. At the end of every epoch (and of the
run), the held-out molecules' loss is measured with dropout off, each worker on its share. Every
`checkpoint_every_steps` steps and at the end, the workers report a checkpoint through `ray.train.report`: training state plus the
metric history, so a restarted worker group (FailureConfig) or a re-run of the same run name picks
up exactly where the last checkpoint left off, history included. The last report also carries the
exported model (`model/`: safetensors, config, tokenizer, provenance).
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from deepmolm.runtime import numerics
from deepmolm.training.checkpoints import EXPORT, HISTORY, PROVENANCE, STATE, checkpoint_name
from deepmolm.training.deepmolm.data import (
    InstructionDataset,
    collate,
    epoch_batches,
    label_tokens,
    model_inputs,
    token_weight,
)
from deepmolm.training.deepmolm.number_head import refit_number_head, restore_fitted_head
from deepmolm.training.deepmolm.stages import (
    add_lora,
    initial_model,
    lora_enabled,
    merge_lora,
    random_parts,
    set_trainable,
)


def seed_everything(seed: int) -> None:
    """Seeds, and torch's deterministic kernels where it has them (warning, not failing, where it has
    none), so a run's exported weights are the same bytes every time it is repeated."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what deterministic cuBLAS needs
    torch.use_deterministic_algorithms(True, warn_only=True)


def start_state(saved: dict | None) -> dict:
    """The bookkeeping a worker starts from: a fresh run's, or a checkpoint's with this resume noted.
    `batches_in_epoch` counts micro-batches, so a resume skips exactly the ones already stepped on."""
    if saved is None:
        return {"step": 0, "epoch": 0, "batches_in_epoch": 0, "resumed_from": []}
    return {**saved, "resumed_from": [*saved["resumed_from"], saved["step"]]}


def remaining(order: list, batches_in_epoch: int) -> list:
    """This epoch's micro-batches not yet stepped on: the epoch's order is a function of (seed,
    epoch, rank), so the rest of an interrupted epoch is the rest of the same list."""
    return order[batches_in_epoch:]


def after_step(state: dict, index: int) -> None:
    """An optimizer step done on the epoch's micro-batches up to `index`: a checkpoint now resumes after it."""
    state["step"], state["batches_in_epoch"] = state["step"] + 1, index + 1


def next_epoch(state: dict) -> None:
    state["epoch"], state["batches_in_epoch"] = state["epoch"] + 1, 0


def _same_shape(config, stage) -> torch.nn.Module:
    """A new DeepMoLM shaped like the trained one (LoRA-wrapped when the stage is)."""
    from deepmolm.models.deepmolm.modeling import DeepMoLMForCausalLM

    model = DeepMoLMForCausalLM(config)
    if lora_enabled(stage):
        add_lora(model, stage.lora)
    return model


def train_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch

    from deepmolm.models.deepmolm.tokenizer import load_tokenizer
    from deepmolm.training.strategy import DDPStrategy, DeepSpeedStrategy

    params, stage_number, plan = config["params"], config["stage"], config["plan"]
    train, stage = params.train, params.train.stage(stage_number)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    bf16 = plan["bf16"]
    numerics.check(params.numerics, params.numerics.worker_threads)
    _note_worker(plan, rank)

    tokenizer = load_tokenizer(Path(config["tokenizer"]))
    model = initial_model(params, stage_number, tokenizer, Path(config["init"]) if config["init"] else None)
    if lora_enabled(stage):
        add_lora(model, stage.lora)
    counts = set_trainable(model, stage, random_parts(params, stage_number))
    spec = model.config.encoder_spec()  # how its pixels are normalised, with the weights it has
    seed_everything(train.seed + rank)
    total = plan["total_steps"]
    if train.strategy == "deepspeed":
        strategy = DeepSpeedStrategy(model, train, stage, total, device, bf16, plan["deepspeed_config"],
                                     rebuild=functools.partial(_same_shape, model.config, stage))
    else:
        strategy = DDPStrategy(model, train, stage, total, device, bf16)

    state, history = start_state(None), []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            saved = json.loads((Path(directory) / STATE).read_text())
            strategy.load(Path(directory))
            if saved.get("number_head_refit"):
                if train.number_head_refit.per_view:
                    strategy.module.split_number_head()
                restore_fitted_head(strategy.module, Path(directory) / EXPORT)
            history = [json.loads(line) for line in (Path(directory) / HISTORY).read_text().splitlines() if line]
        state = start_state(saved)
        if rank == 0:
            print(f"[train] stage {stage_number}: resuming at step {state['step']} of {total}", flush=True)
    if state.get("final"):
        _report(strategy, tokenizer, config, state, history, rank, final=True)  # a finished run: export again
        return

    accum = train.grad_accum_steps
    batches_per_epoch = plan["steps_per_epoch"] * accum
    spec = model.config.encoder_spec()
    datasets = {part: InstructionDataset(Path(plan["instructions"]), tokenizer, drawings=Path(plan["drawings"]),
                                         image_tokens=spec.tokens, max_length=params.model.max_length,
                                         rows=config["rows"][part], number_slots=model.config.number_head,
                                         withhold_e3fp=stage.withhold_e3fp if part == "train" else 0.0,
                                         seed=train.seed)
                for part in ("train", "holdout")}
    chosen = config["rows"]["train"]
    lengths = chosen.tokens.tolist()
    labels_per_batch = train.micro_batch_size * float(chosen.response_tokens.sum()) / len(lengths)
    pad = functools.partial(collate, pad_id=tokenizer.pad_token_id, e3fp_levels=params.featurize.e3fp.level + 1)
    loader_options = {"collate_fn": pad, "num_workers": train.loader_workers}
    if train.loader_workers:
        loader_options["prefetch_factor"] = train.loader_batches_ahead
    log_every = max(1, total // 40)
    if rank == 0:
        print(f"[train] stage {stage_number}: {total} steps on {world} worker(s), "
              f"{counts['trainable']:,} trainable / {counts['frozen']:,} frozen parameters ({train.strategy}), "
              f"{len(datasets['train'])} training and {len(datasets['holdout'])} held-out examples; "
              + ", ".join(f"{block} {mode}" for block, mode in counts["blocks"].items()), flush=True)
    while state["step"] < total:
        skip, pending, started = state["batches_in_epoch"], [], time.perf_counter()
        datasets["train"].epoch = state["epoch"]  # which examples train without E3FP (a loader copies it)
        order = epoch_batches(len(datasets["train"]), seed=train.seed, epoch=state["epoch"], rank=rank, world=world,
                              batch_size=train.micro_batch_size, lengths=lengths,
                              group_steps=train.length_group_steps)[:batches_per_epoch]
        if len(order) < batches_per_epoch:
            raise RuntimeError(f"worker {rank} got {len(order)} batches of {train.micro_batch_size}, "
                               f"the plan {batches_per_epoch}")
        loader = torch.utils.data.DataLoader(datasets["train"], batch_sampler=remaining(order, skip), **loader_options)
        for index, batch in enumerate(loader, start=skip):
            pending.append(model_inputs(batch, spec, device))
            if len(pending) < accum:
                continue
            row = optimizer_step(strategy, pending, world, started, state["epoch"],
                                 weights=[token_weight(b["labels"], labels_per_batch) for b in pending])
            after_step(state, index)
            history.append({"step": state["step"], **row})
            pending, started = [], time.perf_counter()
            if rank == 0 and (state["step"] % log_every == 0 or state["step"] == total):
                print(f"[train] stage {stage_number} step {state['step']}/{total} loss {row['loss']:.4f} "
                      f"lr {row['lr']:.2e} grad_norm {row['grad_norm']:.3f} {row['samples_per_s']:.1f} samples/s",
                      flush=True)
            if state["step"] >= total:
                break
            if state["step"] % train.checkpoint_every_steps == 0:
                _report(strategy, tokenizer, config, state, history, rank, final=False)
        if state["batches_in_epoch"] >= batches_per_epoch or state["step"] >= total:  # an epoch (or the run) is over
            state["epochs"] = [*state.get("epochs", []), {
                "epoch": state["epoch"], "step": state["step"],
                "train_loss": _mean([h["loss"] for h in history if h["epoch"] == state["epoch"]]),
                "holdout_loss": holdout_loss(strategy, datasets["holdout"], loader_options, train.micro_batch_size,
                                             spec, device, rank, world)}]
            if rank == 0:
                print(f"[train] stage {stage_number} epoch {state['epoch']}: held-out loss "
                      f"{state['epochs'][-1]['holdout_loss']}", flush=True)
        if state["step"] < total:
            next_epoch(state)
    if model.config.number_head and train.number_head_refit.steps:
        started = time.perf_counter()
        # Fitted on the inputs it answers at evaluation, never the epoch's random mix: both views, and
        # split per view, every example again from the drawing alone for the drawing's head
        shares = [0.0]
        if train.number_head_refit.per_view and config["rows"]["train"].slot.any():  # not after captions alone
            strategy.module.split_number_head()
            shares = [0.0, 1.0]
        train_slots, holdout_slots = ([slot_batches(datasets[part].withholding(share), config["rows"][part], rank, world,
                                                    loader_options, train.micro_batch_size, spec, device)
                                       for share in shares] for part in ("train", "holdout"))
        state["number_head_refit"] = refit_number_head(
            strategy.module, itertools.chain.from_iterable(train_slots), itertools.chain.from_iterable(holdout_slots),
            train.number_head_refit, device, bf16, rank, world)
        if rank == 0 and state["number_head_refit"]:
            print(f"[train] stage {stage_number}: number head fitted again in {time.perf_counter() - started:.1f} s "
                  f"{state['number_head_refit']}", flush=True)
    state["final"] = True
    _report(strategy, tokenizer, config, state, history, rank, final=True)


def holdout_loss(strategy, dataset, loader_options: dict, batch_size: int, spec, device, rank: int, world: int) -> float | None:
    """Token-weighted loss over the held-out examples, each worker scoring every world-th one."""
    mine = list(range(rank, len(dataset), world))
    totals = torch.zeros(2, dtype=torch.float64)
    batches = [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
    for batch in torch.utils.data.DataLoader(dataset, batch_sampler=batches, **loader_options):
        inputs = model_inputs(batch, spec, device)
        tokens = label_tokens(inputs["labels"])
        totals += torch.tensor([strategy.eval_loss(inputs) * tokens, tokens], dtype=torch.float64)
    if world > 1:
        torch.distributed.all_reduce(totals)
    return round(float(totals[0] / totals[1]), 5) if totals[1] else None


def slot_batches(dataset, rows, rank: int, world: int, loader_options: dict, batch_size: int, spec, device):
    """Model inputs of this worker's share of the examples whose answer is a <num> slot, in order."""
    mine = [int(i) for i in rows.slot.nonzero()[0][rank::world]]
    batches = [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
    for batch in torch.utils.data.DataLoader(dataset, batch_sampler=batches, **loader_options):
        yield model_inputs(batch, spec, device)


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 5) if values else None


def optimizer_step(strategy, pending: list[dict], world: int, started: float, epoch: int,
                   weights: list[float] | None = None) -> dict:
    """One optimizer step (each micro-batch's loss times its weight: 1 when None); loss, samples and
    tokens summed over the workers."""
    loss, norm = strategy.step(pending, weights or [1.0] * len(pending))
    totals = torch.tensor([loss, sum(len(b["input_ids"]) for b in pending),
                           sum(int(b["attention_mask"].sum()) for b in pending)], dtype=torch.float64)
    if world > 1:
        torch.distributed.all_reduce(totals)
    seconds = time.perf_counter() - started
    return {"epoch": epoch, "loss": float(totals[0]) / world, "lr": strategy.lr(), "grad_norm": norm,
            "samples_per_s": float(totals[1]) / seconds, "tokens_per_s": float(totals[2]) / seconds,
            "seconds": seconds}


def _report(strategy, tokenizer, config: dict, state: dict, history: list[dict], rank: int, final: bool) -> None:
    """A checkpoint through ray.train.report: every rank when the strategy shards its state (the
    files land in one directory), otherwise rank 0 alone."""
    import ray.train

    module = strategy.full_module() if final else None  # collective under ZeRO-3
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        strategy.save(directory, rank)
        if rank == 0:
            (directory / STATE).write_text(json.dumps(state))
            (directory / HISTORY).write_text("".join(json.dumps(row) + "\n" for row in history))
            if final:
                save_export(module, tokenizer, config, state, directory / EXPORT)
        metrics = {**(history[-1] if history else {}), "step": state["step"], "final": final}
        keep = rank == 0 or strategy.saves_on_every_rank
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp) if keep else None,
                         checkpoint_dir_name=checkpoint_name(state, final=final))


def save_export(module, tokenizer, config: dict, state: dict, out: Path) -> None:
    """The trained model as a plain DeepMoLM checkpoint: LoRA merged, in the training precision."""
    model = merge_lora(module).cpu()  # the run is over: the training copy can be changed
    if config["plan"]["bf16"]:
        model = model.to(torch.bfloat16)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    (out / PROVENANCE).write_text(json.dumps({  # paths as the project records them (deepmolm/runtime/run_log.py)
        "run": config["plan"]["run"], "stage": config["stage"], "steps": state["step"],
        **config["plan"]["provenance"]}, indent=2))


def _note_worker(plan: dict, rank: int) -> None:
    """Which process is which rank, in the run's local directory (for an operator, or a test that
    kills a worker on purpose)."""
    local = plan.get("local_run_dir")
    if local:
        workers = Path(local) / "workers"
        workers.mkdir(parents=True, exist_ok=True)
        (workers / f"rank{rank}.pid").write_text(str(os.getpid()))
