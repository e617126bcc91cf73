"""The number head fitted again, alone, on the trained model's frozen inputs (train.number_head_refit).

Trained end to end with everything else, the head ends under-trained: its answers sit below the truth
at every size, on its own training molecules as much as on held-out ones. Its inputs hold more: the
same head fitted alone on them, many slots per step at ten times the rate, is centred and 10-35% closer
on every property. Raising the head's own rate inside the joint training does not do it: its answers
and the held-out loss got worse (a stage-2 step holds only a few slots). docs/benchmarks.md, "Why the
head misses", "The head at its own rate, tried and dropped" and "The head fitted again", has the
measurements.

Every worker reads the slots of its share of the examples and receives everyone's. Each head is fitted
by one worker and broadcast from it with its figures: the single head by rank 0 (the others would
repeat its work on the same cores), the two heads of a split (per_view) by two workers at once.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers.utils import SAFE_WEIGHTS_NAME

from deepmolm.config import NumberHeadRefitParams
from deepmolm.models.deepmolm.modeling import has_geometry, number_heads, signed_log


def slot_inputs(model, batches, device, bf16: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The head's inputs, targets (signed log) and whether the molecule had E3FP (which head answers it)
    at every <num> slot of `batches` (model inputs on `device`, data.model_inputs), on the CPU."""
    model.eval()
    inputs, targets, geometry = [], [], []
    try:
        for batch in batches:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                features, rows = model.slot_inputs(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                                                   batch["e3fp"], batch["labels"])
            inputs.append(features.float().cpu())
            targets.append(signed_log(batch["numbers"][rows].float()).cpu())
            geometry.append(has_geometry(batch["e3fp"], len(batch["input_ids"]), rows.device)[rows].cpu())
    finally:
        model.train()
    if not inputs:  # a worker whose share has no slot: no rows, the head's width
        return torch.zeros(0, model.number_head[0].normalized_shape[0]), torch.zeros(0), torch.zeros(0, dtype=torch.bool)
    return torch.cat(inputs), torch.cat(targets), torch.cat(geometry)


def everyones(tensor: torch.Tensor, world: int) -> torch.Tensor:
    """Every worker's rows of `tensor`, in rank order, on every worker."""
    if world == 1:
        return tensor
    parts: list = [None] * world
    torch.distributed.all_gather_object(parts, tensor)
    return torch.cat(parts)


def l1(head: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> float | None:
    """Mean L1 on the signed log scale (what training minimises), or None without slots."""
    if not len(targets):
        return None
    with torch.no_grad():
        return round(float((head(inputs).squeeze(-1) - targets).abs().mean()), 5)


def fit(head: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
        refit: NumberHeadRefitParams) -> torch.nn.Module:
    """A float32 copy of `head` fitted on (inputs, targets): AdamW, a cosine to 0, L1, `refit.batch_size`
    slots drawn at random per step from `refit.seed`."""
    fitted = copy.deepcopy(head).float().train()
    optimizer = torch.optim.AdamW(fitted.parameters(), lr=refit.learning_rate, weight_decay=refit.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / refit.steps)))
    generator = torch.Generator().manual_seed(refit.seed)
    for _ in range(refit.steps):
        chosen = torch.randint(len(targets), (refit.batch_size,), generator=generator)
        loss = (fitted(inputs[chosen]).squeeze(-1) - targets[chosen]).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return fitted.eval()


def answered_by(head: str, per_view: bool, inputs: torch.Tensor, targets: torch.Tensor,
                geometry: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The slots `head` answers: all of them for a single head; per view, those with E3FP for
    number_head and those without for number_head_drawing."""
    keep = torch.ones_like(geometry) if not per_view else geometry if head == "number_head" else ~geometry
    return inputs[keep], targets[keep]


def refit_head(head: torch.nn.Module, refit: NumberHeadRefitParams, train: tuple[torch.Tensor, torch.Tensor],
               held: tuple[torch.Tensor, torch.Tensor]) -> dict:
    """Fit `head` again on the (inputs, targets) of `train`, in place (left as it is without a slot);
    its slot counts and L1 before and after, on `train` and `held`."""
    before = copy.deepcopy(head).float().cpu()
    fitted = fit(before, *train, refit) if len(train[1]) else before
    with torch.no_grad():
        for target, source in zip(head.parameters(), fitted.parameters()):
            target.copy_(source.to(target.device, target.dtype))
    return {"slots": len(train[1]), "held_out_slots": len(held[1]),
            "train_l1": [l1(before, *train), l1(fitted, *train)], "holdout_l1": [l1(before, *held), l1(fitted, *held)]}


def refit_number_head(model, train_batches, holdout_batches, refit: NumberHeadRefitParams, device, bf16: bool,
                      rank: int, world: int) -> dict | None:
    """Fit the model's number heads again on the slots of `train_batches` (this worker's share), in place,
    each on the slots of its own view after split_number_head (the one head, on all of them before);
    returns the figures of the fit (no timing: they go into the stage's metrics, which two runs must
    write alike): the first head's at the top, the drawing head's under `number_head_drawing`; None when
    no worker has a slot (a stage without property answers). The k-th head is fitted by worker k mod
    world: the same bytes as one worker fitting both, in half the time on two."""
    train = [everyones(t, world) for t in slot_inputs(model, train_batches, device, bf16)]
    held = [everyones(t, world) for t in slot_inputs(model, holdout_batches, device, bf16)]
    if not len(train[1]):
        return None
    heads, per_view = number_heads(model), model.config.number_head_per_view
    fitters = {name: index % world for index, name in enumerate(heads)}
    fits = {name: refit_head(head, refit, *(answered_by(name, per_view, *slots) for slots in (train, held)))
            for name, head in heads.items() if fitters[name] == rank}
    if world > 1:
        every: list = [None] * world
        torch.distributed.all_gather_object(every, fits)
        fits = {name: figures for part in every for name, figures in part.items()}
        with torch.no_grad():
            for name, head in heads.items():
                for target in head.parameters():
                    torch.distributed.broadcast(target, src=fitters[name])
    return {"steps": refit.steps, **fits["number_head"]} | (
        {"number_head_drawing": fits["number_head_drawing"]} if per_view else {})


def restore_fitted_head(model, export: Path) -> None:
    """The fitted heads of a finished run's export into `model`: an optimizer that keeps its own copy
    of the weights (DeepSpeed's ZeRO partitions) restores the heads as training left them."""
    weights = load_file(str(export / SAFE_WEIGHTS_NAME))
    for name, head in number_heads(model).items():
        head.load_state_dict({key.removeprefix(f"{name}."): value for key, value in weights.items()
                              if key.startswith(f"{name}.")})
