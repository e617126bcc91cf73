"""What MuMo's Ray Train workers run: MLM pretraining, and the fine-tuning grid of the benchmark.

Both step the model through the DeepMoLM stages' DDP strategy (AdamW, warmup + cosine, clipping,
all-reduced gradients) and report checkpoints through `ray.train.report`, so a killed worker group
or a re-run of the same run name resumes: pretraining from its last step, the grid from its last
finished fine-tuning run. Every rank takes its slice of each global batch of a seeded permutation.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from deepmolm.models.mumo.processing import Molecule, mask_tokens, model_inputs
from deepmolm.runtime import numerics
from deepmolm.training.checkpoints import (
    HISTORY,
    PROVENANCE,
    RESULTS,
    STATE,
    checkpoint_name,
    report_files,
    restore_files,
    resumed_state,
    step_through_epochs,
    worker_context,
)
from deepmolm.training.deepmolm.loop import optimizer_step, seed_everything
from deepmolm.training.metrics import regression_errors


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int, world: int) -> list[np.ndarray]:
    """This rank's share of each full global batch of a seeded shuffle (the last partial one is dropped;
    a set smaller than one batch is one batch)."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    size = min(batch_size, n)
    return [order[start:start + size][rank::world] for start in range(0, n - size + 1, size)]


def steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, n // batch_size)


def _to(inputs: dict, device: torch.device) -> dict:
    return {key: value.to(device) for key, value in inputs.items()}


HOLDOUT_MASK_SEED = 20240  # the held-out molecules' masks: drawn once, the same at every evaluation


def held_out_loss(module, tokenizer, molecules: list[Molecule], *, max_length: int, mask_ratio: float, device,
                  batch_size: int = 64) -> float | None:
    """The MLM loss per masked token over `molecules`, every evaluation with the same masks."""
    if not molecules:
        return None
    generator = torch.Generator().manual_seed(HOLDOUT_MASK_SEED)
    total, tokens = 0.0, 0
    module.eval()
    with torch.no_grad():
        for start in range(0, len(molecules), batch_size):
            inputs = mask_tokens(model_inputs(tokenizer, molecules[start:start + batch_size], max_length), tokenizer,
                                 mask_ratio, generator)
            masked = int((inputs["labels"] != -100).sum())
            total += float(module(**_to(inputs, device)).loss) * masked
            tokens += masked
    module.train()
    return round(total / max(tokens, 1), 5)


def pretrain_worker(config: dict) -> None:
    """Masked-language modelling on SMILES, with each molecule's structural prior injected."""
    import ray

    from deepmolm.models.mumo.modeling import MuMoForMaskedLM
    from deepmolm.models.mumo.presets import mumo_config
    from deepmolm.training.strategy import DDPStrategy

    params, plan, tokenizer = config["params"], config["plan"], config["tokenizer"]
    molecules: list[Molecule] = ray.get(config["molecules"])
    held_out: list[Molecule] = ray.get(config["held_out"])
    rank, world, device = worker_context()
    numerics.check(params.numerics, params.numerics.worker_threads)
    run = params.mumo.pretrain
    seed_everything(params.train.seed)
    model = MuMoForMaskedLM(mumo_config(params, vocab_size=len(tokenizer)))
    strategy = DDPStrategy(model, params.train, run, plan["total_steps"], device, False)
    state, history = resumed_state(strategy)
    total = plan["total_steps"]
    generator = torch.Generator().manual_seed(params.train.seed * 7919 + rank)

    def export(out: Path) -> None:
        strategy.module.save_pretrained(str(out))
        # the backend keeps the last call's truncation and padding and would save them: a run resumed
        # at its final checkpoint encodes nothing first, and its tokenizer.json came out other bytes
        tokenizer.backend_tokenizer.no_truncation()
        tokenizer.backend_tokenizer.no_padding()
        tokenizer.save_pretrained(str(out))
        (out / PROVENANCE).write_text(json.dumps({"run": plan["run"], "steps": state["step"],
                                                  "shards": plan["shards"], "molecules": len(molecules)}, indent=2))

    def files() -> dict[str, str]:
        return {STATE: json.dumps(state), HISTORY: "".join(json.dumps(row) + "\n" for row in history)}

    def evaluate() -> float | None:
        return held_out_loss(strategy.module, tokenizer, held_out, max_length=params.mumo.max_length,
                             mask_ratio=run.mask_ratio, device=device)

    def epoch_ended(epoch: int, rows: list[dict]) -> None:
        if rank == 0:  # the other ranks wait for it at the next step's all-reduce
            train_loss = float(np.mean([row["loss"] for row in rows])) if rows else None
            state.setdefault("epochs", []).append({"epoch": epoch, "step": state["step"], "train_loss": train_loss,
                                                   "holdout_loss": evaluate()})

    def step_ended(step: int) -> None:
        every = run.holdout_every_steps
        if rank == 0 and every and step % every == 0 and step not in {row["step"] for row in state.get("epochs", [])}:
            state.setdefault("holdout", []).append({"step": step, "holdout_loss": evaluate()})
            print(f"[mumo pretrain] step {step}: held-out loss {state['holdout'][-1]['holdout_loss']}", flush=True)

    if rank == 0:
        print(f"[mumo] pretraining: {total} steps on {world} worker(s), {len(molecules)} molecules, "
              f"{len(held_out)} held out", flush=True)
        if not state["step"]:
            state["before"] = evaluate()

    def step(index, epoch: int) -> dict:
        started = time.perf_counter()
        inputs = mask_tokens(model_inputs(tokenizer, [molecules[i] for i in index], params.mumo.max_length), tokenizer,
                             run.mask_ratio, generator)
        return optimizer_step(strategy, [_to(inputs, device)], world, started, epoch)

    step_through_epochs(strategy, state, history, total=total, step=step, files=files, rank=rank, tag="mumo pretrain",
                        epoch_batches=lambda epoch: epoch_batches(len(molecules), run.batch_size, params.train.seed,
                                                                  epoch, rank, world),
                        checkpoint_every=params.train.checkpoint_every_steps, epoch_ended=epoch_ended,
                        step_ended=step_ended)
    state["final"] = True
    report_files(files(), strategy, rank, {"step": state["step"], "final": True}, checkpoint_name(state, final=True),
            export=export)


def predict(module, tokenizer, molecules: list[Molecule], max_length: int, device, batch_size: int = 64) -> np.ndarray:
    module.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(molecules), batch_size):
            inputs = _to(model_inputs(tokenizer, molecules[start:start + batch_size], max_length), device)
            out.append(module(**inputs).logits[:, 0].float().cpu().numpy())
    module.train()
    return np.concatenate(out) if out else np.zeros(0)


def finetune_once(params, job: dict, parts: dict[str, list[Molecule]], noisy: dict[float, list[Molecule]],
                  tokenizer, pretrained: str, rank: int, world: int, device) -> dict:
    """One fine-tuning run: train on `train`, keep the epoch with the best validation RMSE, score
    `test` (and the same test molecules with noisy conformers) with it."""
    from deepmolm.models.mumo.modeling import MuMoForPropertyPrediction
    from deepmolm.training.strategy import DDPStrategy

    run, started = params.mumo.finetune, time.perf_counter()
    seed_everything(job["seed"])
    train, valid, test = parts["train"], parts["valid"], parts["test"]
    targets = np.array([m.target for m in train])
    mean, std = float(targets.mean()), float(targets.std() or 1.0)
    dropout = {} if run.dropout is None else {"dropout": run.dropout}
    model = MuMoForPropertyPrediction.from_pretrained(pretrained, injection_layer=job["injection_layer"],
                                                      num_targets=1, target_kind="regression", **dropout)
    per_epoch = steps_per_epoch(len(train), run.batch_size)
    total = run.max_steps or run.epochs * per_epoch
    strategy = DDPStrategy(model, params.train, run, total, device, False,
                           lr_scale=lambda name: 1.0 if name.startswith("head.") else run.pretrained_lr_ratio)
    best, best_state, curve, step, epoch = float("inf"), None, [], 0, 0
    while step < total:
        losses = []
        for index in epoch_batches(len(train), run.batch_size, job["seed"], epoch, rank, world):
            chosen = [train[i] for i in index]
            inputs = model_inputs(tokenizer, chosen, params.mumo.max_length)
            inputs["labels"] = torch.tensor([(m.target - mean) / std for m in chosen], dtype=torch.float32)
            row = optimizer_step(strategy, [_to(inputs, device)], world, time.perf_counter(), epoch)
            losses.append(row["loss"])
            step += 1
            if step >= total:
                break
        valid_rmse = float("nan")
        if valid:  # a scaffold split of a tiny set can leave it empty: then the last epoch is kept
            predicted = predict(strategy.module, tokenizer, valid, params.mumo.max_length, device) * std + mean
            valid_rmse = regression_errors(np.array([m.target for m in valid]), predicted)["rmse"]
        curve.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "valid_rmse": valid_rmse})
        if not valid or valid_rmse < best:
            best, best_state = valid_rmse, copy.deepcopy(strategy.module.state_dict())
        epoch += 1
    strategy.module.load_state_dict(best_state)
    truth = np.array([m.target for m in test])
    score = {"test": regression_errors(truth, predict(strategy.module, tokenizer, test, params.mumo.max_length, device) * std + mean)}
    for sigma, molecules in noisy.items():
        predicted = predict(strategy.module, tokenizer, molecules, params.mumo.max_length, device) * std + mean
        score[f"test_noise_{sigma}"] = regression_errors(truth, predicted)
    best_epoch = min(curve, key=lambda row: row["valid_rmse"])["epoch"] if valid else curve[-1]["epoch"]
    return {**job, **score, "valid_rmse": best, "best_epoch": best_epoch, "steps": step,
            "sizes": {name: len(part) for name, part in parts.items()}, "curve": curve,
            "seconds": round(time.perf_counter() - started, 1)}


def finetune_worker(config: dict) -> None:
    """The benchmark's fine-tuning runs in order; a checkpoint after each holds the results so far."""
    import ray

    params, jobs, tokenizer = config["params"], config["jobs"], config["tokenizer"]
    data = ray.get(config["data"])
    rank, world, device = worker_context()
    numerics.check(params.numerics, params.numerics.worker_threads)
    results: list[dict] = []
    if (restored := restore_files()) is not None:
        results = [json.loads(line) for line in restored[0].get(RESULTS, "").splitlines() if line]
    done = {r["name"] for r in results}
    for job in jobs:
        if job["name"] in done:
            continue
        sets = data[job["dataset"]]
        split = sets["splits"][f"{job['split']}/{job['seed']}"]
        parts = {part: [sets["molecules"][i] for i in split[part] if sets["molecules"][i] is not None]
                 for part in ("train", "valid", "test")}
        noisy = {sigma: [molecules[i] for i in split["test"] if molecules[i] is not None]
                 for sigma, molecules in sets["noisy"].items()}
        result = finetune_once(params, job, parts, noisy, tokenizer, config["pretrained"], rank, world, device)
        results.append(result)
        if rank == 0:
            print(f"[mumo] {job['name']}: test RMSE {result['test']['rmse']:.3f} (best epoch {result['best_epoch']}, "
                  f"{result['seconds']} s) [{len(results)}/{len(jobs)}]", flush=True)
        text = "".join(json.dumps(r) + "\n" for r in results)
        report_files({RESULTS: text}, None, rank, {"finished": len(results)}, f"checkpoint_{len(results):04d}")
