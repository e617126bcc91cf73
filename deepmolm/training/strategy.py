"""The two ways a worker steps the model: DDP (Ray Train's prepare_model) or a DeepSpeed engine.

Both take one optimizer step from a list of micro-batches (gradient accumulation), clip the global
gradient norm, step AdamW and the warmup + cosine schedule, and save or restore their whole training
state in a checkpoint directory. DDP keeps only the trainable weights, the optimizer and the schedule
(rank 0 writes them); DeepSpeed writes its own sharded checkpoint from every rank, frozen weights
excluded. Frozen weights come back from the run's starting point, which is part of its name.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from deepmolm.config import StageParams, TrainParams

DEEPSPEED_TAG = "state"
# DeepSpeed's own size for ZeRO's gradient buckets (reduce and all-gather), in elements
DEEPSPEED_BUCKET_ELEMENTS = 500_000_000


def param_groups(model: torch.nn.Module, weight_decay: float, learning_rate: float,
                 lr_scale: Callable[[str], float] | None = None) -> list[dict]:
    """Decay on matrices only; biases, norms and single vectors are not decayed. `lr_scale(name)`
    gives a weight its own rate (a fraction of `learning_rate`): fine-tuning moves pretrained layers
    less than a new head. The schedule scales every group's rate alike."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    scales = {n: 1.0 if lr_scale is None else float(lr_scale(n)) for n, _ in trainable}
    return [{"params": [p for n, p in trainable if (p.ndim >= 2) == decayed and scales[n] == scale],
             "weight_decay": weight_decay if decayed else 0.0, "lr": learning_rate * scale}
            for scale in dict.fromkeys(scales.values() or [1.0]) for decayed in (True, False)]


def schedule(optimizer, stage: StageParams, total_steps: int):
    return get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, num_warmup_steps=int(stage.warmup_ratio * total_steps), num_training_steps=total_steps,
        min_lr_rate=stage.min_lr_ratio)


def deepspeed_config(train: TrainParams, bf16: bool) -> dict:
    """The DeepSpeed config the run uses, from params (written next to the run by the launcher); the
    strategy sizes its buckets to the model (`bucketed`)."""
    zero: dict = {"stage": train.deepspeed.zero_stage, "overlap_comm": True, "contiguous_gradients": True}
    if train.deepspeed.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True  # the export gathers full weights
    if train.deepspeed.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": train.grad_accum_steps,
        "train_batch_size": train.micro_batch_size * train.grad_accum_steps * train.scaling.workers,
        "gradient_clipping": train.max_grad_norm,
        "bf16": {"enabled": bf16},
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,  # torch's AdamW as the client optimizer
        "steps_per_print": 10**9,  # the loop logs its own metrics
        "wall_clock_breakdown": False,
    }


def bucketed(config: dict, trainable_elements: int) -> dict:
    """`config` with ZeRO's gradient buckets no larger than the gradients there are. DeepSpeed's
    default is 5e8 elements whatever the model, and ZeRO-2 lays out new buckets every micro-step: a
    stage that tunes a small projector held them on the GPU for nothing, and on CPU the rehearsal's
    tiny model took 2.4 s a step with them against 0.2 s (docs/benchmarks.md). Every gradient still
    fits one bucket when it did before, so the reductions and the bytes are the same."""
    size = max(1, min(DEEPSPEED_BUCKET_ELEMENTS, trainable_elements))
    zero = {"reduce_bucket_size": size, "allgather_bucket_size": size, **config["zero_optimization"]}
    return {**config, "zero_optimization": zero}


class DDPStrategy:
    saves_on_every_rank = False

    def __init__(self, model: torch.nn.Module, train: TrainParams, stage: StageParams, total_steps: int,
                 device: torch.device, bf16: bool, lr_scale: Callable[[str], float] | None = None):
        import ray.train.torch

        self.device, self.bf16, self.max_grad_norm = device, bf16, train.max_grad_norm
        self.model = ray.train.torch.prepare_model(model, move_to_device=device)
        self.module = getattr(self.model, "module", self.model)
        self.optimizer = torch.optim.AdamW(param_groups(self.module, stage.weight_decay, stage.learning_rate, lr_scale),
                                           lr=stage.learning_rate,
                                           betas=tuple(train.adam_betas), eps=train.adam_eps,
                                           fused=device.type == "cuda")
        self.scheduler = schedule(self.optimizer, stage, total_steps)

    def step(self, micro_batches: list[dict], weights: list[float]) -> tuple[float, float]:
        """One optimizer step, each micro-batch's mean token loss times its weight (data.token_weight);
        returns (the step's mean token loss, gradient norm before clipping)."""
        losses = []
        for i, inputs in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            # gradients are all-reduced once, on the last micro-batch (a fresh no_sync context each time)
            sync = contextlib.nullcontext() if last or not hasattr(self.model, "no_sync") else self.model.no_sync()
            with sync:
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                    loss = self.model(**inputs).loss
                (loss * weights[i] / len(micro_batches)).backward()
            losses.append(loss.detach().float())
        norm = torch.nn.utils.clip_grad_norm_([p for p in self.module.parameters() if p.requires_grad],
                                              self.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return _token_mean(losses, weights), float(norm)

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    @torch.no_grad()
    def eval_loss(self, inputs: dict) -> float:
        """Mean token loss of one batch in eval mode (dropout off), without DDP's gradient hooks."""
        self.module.eval()
        try:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                return float(self.module(**inputs).loss)
        finally:
            self.module.train()

    def save(self, directory: Path, rank: int) -> None:
        if rank != 0:
            return
        trainable = {n: p.detach().cpu().contiguous() for n, p in self.module.named_parameters() if p.requires_grad}
        save_file(trainable, str(directory / "trainable.safetensors"))
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                   directory / "optimizer.pt")

    def load(self, directory: Path) -> None:
        trainable = load_file(str(directory / "trainable.safetensors"), device=str(self.device))
        missing = {n for n, p in self.module.named_parameters() if p.requires_grad} - set(trainable)
        if missing:
            raise ValueError(f"checkpoint {directory} lacks trainable weights: {sorted(missing)[:5]}")
        self.module.load_state_dict(trainable, strict=False)
        state = torch.load(directory / "optimizer.pt", map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def full_module(self) -> torch.nn.Module | None:
        """The whole model with its trained weights (every rank calls; rank 0 uses it)."""
        return self.module


class DeepSpeedStrategy:
    saves_on_every_rank = True

    def __init__(self, model: torch.nn.Module, train: TrainParams, stage: StageParams, total_steps: int,
                 device: torch.device, bf16: bool, config: dict, rebuild: Callable[[], torch.nn.Module]):
        """`rebuild()`: a new module shaped like `model` (its wrappers included), for ZeRO-3's
        consolidated weights; the strategy knows no model family."""
        import deepspeed

        config = bucketed(config, sum(p.numel() for p in model.parameters() if p.requires_grad))
        self.device, self.bf16, self.config, self.rebuild = device, bf16, config, rebuild
        if device.type == "cuda":
            torch.cuda.set_device(device)
        else:
            # On CPU DeepSpeed's communication backend JIT-compiles a shared-memory all-reduce (a C++ op,
            # about 45 CPU-s in each new environment) that only its inference all-reduce calls; training's
            # collectives go through torch.distributed. Marked unbuildable, it is not built.
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        optimizer = torch.optim.AdamW(param_groups(model, stage.weight_decay, stage.learning_rate), lr=stage.learning_rate,
                                      betas=tuple(train.adam_betas), eps=train.adam_eps)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, config=config, dist_init_required=False,
            lr_scheduler=lambda opt: schedule(opt, stage, total_steps))
        self.module = self.engine.module

    def step(self, micro_batches: list[dict], weights: list[float]) -> tuple[float, float]:
        losses = []
        for inputs, weight in zip(micro_batches, weights):
            loss = self.engine(**self._precision(inputs)).loss
            self.engine.backward(loss * weight)  # DeepSpeed divides by the accumulation steps itself
            self.engine.step()  # applies the update at the accumulation boundary only
            losses.append(loss.detach().float())
        norm = self.engine.get_global_grad_norm()
        return _token_mean(losses, weights), float(norm if norm is not None else float("nan"))

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    @torch.no_grad()
    def eval_loss(self, inputs: dict) -> float:
        self.engine.eval()
        try:
            return float(self.engine(**self._precision(inputs)).loss)
        finally:
            self.engine.train()

    def _precision(self, inputs: dict) -> dict:
        """Floating inputs in bf16 when the engine is (ids and masks stay integers)."""
        if not self.bf16:
            return inputs
        return {k: v.to(torch.bfloat16) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in inputs.items()}

    def save(self, directory: Path, rank: int) -> None:
        self.engine.save_checkpoint(str(directory), tag=DEEPSPEED_TAG, exclude_frozen_parameters=True)

    def load(self, directory: Path) -> None:
        path, _ = self.engine.load_checkpoint(str(directory), tag=DEEPSPEED_TAG, load_module_strict=False)
        if path is None:
            raise ValueError(f"no DeepSpeed state in checkpoint {directory}")

    def full_module(self) -> torch.nn.Module | None:
        if self.config["zero_optimization"]["stage"] < 3:
            return self.module
        state = self.engine._zero3_consolidated_16bit_state_dict()  # collective: every rank calls
        if state is None:
            return None
        fresh = self.rebuild()
        fresh.load_state_dict(state, strict=True)
        return fresh


def _token_mean(losses: list[torch.Tensor], weights: list[float]) -> float:
    """The mean token loss of a step's micro-batches (weights are proportional to their label tokens)."""
    return float(sum(float(loss) * w for loss, w in zip(losses, weights)) / sum(weights)) if sum(weights) else 0.0
