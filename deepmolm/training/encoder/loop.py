"""What the encoder-pretraining Ray Train workers run: the DeepEncoder with a one-layer head that reads,
from each output token, how many atoms of each kind are drawn under it (a Poisson rate per kind),
stepped through the DeepMoLM stages' DDP strategy and checkpointed as MuMo's pretraining is, so a
re-run of the same run name resumes from its last step.

Every epoch draws every molecule anew (a style seeded by the run's seed, the epoch and the molecule),
so the encoder never sees the same picture twice; the held-out molecules keep one style each.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from deepmolm.models.deepmolm.deep_encoder import DeepEncoder, DeepEncoderSpec
from deepmolm.models.deepmolm.processing import normalise_pixels
from deepmolm.runtime import numerics
from deepmolm.training.checkpoints import (
    HISTORY,
    PROVENANCE,
    STATE,
    checkpoint_name,
    report_files,
    resumed_state,
    step_through_epochs,
    worker_context,
)
from deepmolm.training.deepmolm.loop import seed_everything
from deepmolm.training.encoder.drawings import ATOM_KINDS, DrawingStyle, pretraining_example
from deepmolm.training.mumo.loop import epoch_batches

HOLDOUT_EPOCH = -1  # the held-out drawings' style seed: one style per molecule, every evaluation alike


class DrawingReader(nn.Module):
    """The DeepEncoder and, per output token, log-rates of the atoms of each kind drawn under it."""

    def __init__(self, spec: DeepEncoderSpec):
        super().__init__()
        self.encoder = DeepEncoder(spec)
        self.head = nn.Sequential(nn.LayerNorm(spec.out_dim), nn.Linear(spec.out_dim, len(ATOM_KINDS)))

    def forward(self, pixel_values: torch.Tensor, atoms: torch.Tensor | None = None) -> SimpleNamespace:
        log_rates = self.head(self.encoder(pixel_values))
        loss = None if atoms is None else nn.functional.poisson_nll_loss(log_rates, atoms, log_input=True)
        return SimpleNamespace(loss=loss, log_rates=log_rates)


def drawing_style(run) -> DrawingStyle:
    return DrawingStyle(rotation_deg=run.rotation_deg, bond_line_width=tuple(run.bond_line_width),
                        font_scale=tuple(run.font_scale))


def drawing_batch(smiles: list[str], indices, *, spec: DeepEncoderSpec, run, seed: int, epoch: int) -> dict:
    """uint8 pixels [B, 3, S, S] and atoms per token [B, tokens, kinds] of these molecules."""
    grid, style = spec.grid // 4, drawing_style(run)
    examples = [pretraining_example(smiles[i], image_size=spec.image_size, grid=grid, render_factor=run.render_factor,
                                    style=style, seed=(seed, epoch + 1, int(i))) for i in indices]
    failed = [smiles[i] for i, e in zip(indices, examples) if isinstance(e, str)]
    if failed:  # the corpus keeps only molecules RDKit parsed
        raise ValueError(f"could not draw {failed[:3]}")
    return {"pixels": torch.stack([e[0] for e in examples]), "atoms": torch.stack([e[1] for e in examples])}


@torch.no_grad()
def held_out_metrics(module: DrawingReader, smiles: list[str], *, spec: DeepEncoderSpec, run, seed: int, device,
                     batch_size: int = 64) -> dict:
    """Poisson loss, and the error of the counts the tokens read (per token, and summed over the
    molecule: its heavy atoms and each kind) against always answering the training mean per token."""
    module.eval()
    losses, predicted, truth = [], [], []
    for start in range(0, len(smiles), batch_size):
        batch = drawing_batch(smiles, range(start, min(start + batch_size, len(smiles))), spec=spec, run=run,
                              seed=seed, epoch=HOLDOUT_EPOCH)
        out = module(normalise_pixels(batch["pixels"].to(device), spec), batch["atoms"].to(device))
        losses.append(float(out.loss) * len(batch["atoms"]))
        predicted.append(out.log_rates.exp().cpu())
        truth.append(batch["atoms"])
    module.train()
    predicted, truth = torch.cat(predicted), torch.cat(truth)
    heavy = slice(0, len(ATOM_KINDS) - 1)  # every kind but the aromatic flag: each heavy atom once
    per_molecule = lambda counts: counts[:, :, heavy].sum(dim=(1, 2))  # noqa: E731
    mean_count = truth[:, :, heavy].sum(dim=(1, 2)).mean()
    return {
        "loss": sum(losses) / len(truth),
        "token_count_mae": float((predicted - truth).abs().mean()),
        "token_count_mae_mean_baseline": float((truth - truth.mean(dim=0)).abs().mean()),
        "heavy_atoms_mae": float((per_molecule(predicted) - per_molecule(truth)).abs().mean()),
        "heavy_atoms_mae_mean_baseline": float((per_molecule(truth) - mean_count).abs().mean()),
        "kind_count_mae": {kind: float((predicted[:, :, k].sum(1) - truth[:, :, k].sum(1)).abs().mean())
                           for k, kind in enumerate(ATOM_KINDS)},
    }


def pretrain_worker(config: dict) -> None:
    import ray

    from deepmolm.training.strategy import DDPStrategy

    params, plan = config["params"], config["plan"]
    corpus = ray.get(config["corpus"])
    spec = DeepEncoderSpec(**plan["spec"])
    rank, world, device = worker_context()
    numerics.check(params.numerics, params.numerics.worker_threads)
    run, seed = params.train.encoder_pretrain, params.train.seed
    seed_everything(seed)  # the same random start on every worker
    model = DrawingReader(spec)
    total = plan["total_steps"]
    strategy = DDPStrategy(model, params.train, run, max(total, 1), device, False)
    state, history = resumed_state(strategy)

    def evaluate() -> dict:
        return held_out_metrics(strategy.module, corpus.holdout, spec=spec, run=run, seed=seed, device=device)

    def files() -> dict[str, str]:
        return {STATE: json.dumps(state), HISTORY: "".join(json.dumps(row) + "\n" for row in history)}

    def export(out: Path) -> None:
        from safetensors.torch import save_file

        out.mkdir(parents=True, exist_ok=True)
        weights = {f"encoder.{k}": v.detach().cpu().contiguous()
                   for k, v in strategy.module.encoder.state_dict().items()}
        save_file(weights, str(out / "model.safetensors"))
        (out / "encoder.json").write_text(json.dumps(plan["spec"], indent=2, sort_keys=True))
        (out / PROVENANCE).write_text(json.dumps({"run": plan["run"], "steps": state["step"], "shards": plan["shards"],
                                                  "molecules": len(corpus.train), "held_out": len(corpus.holdout)},
                                                 indent=2))

    if rank == 0:
        print(f"[encoder] pretraining: {total} steps on {world} worker(s), {len(corpus.train)} molecules, "
              f"{len(corpus.holdout)} held out", flush=True)
        if not state["step"]:
            state["before"] = evaluate()

    def step(index, epoch: int) -> dict:
        started = time.perf_counter()
        batch = drawing_batch(corpus.train, index, spec=spec, run=run, seed=seed, epoch=epoch)
        inputs = {"pixel_values": normalise_pixels(batch["pixels"].to(device), spec), "atoms": batch["atoms"].to(device)}
        loss, norm = strategy.step([inputs], [1.0])
        totals = torch.tensor([loss, len(index)], dtype=torch.float64)
        if world > 1:
            torch.distributed.all_reduce(totals)
        seconds = time.perf_counter() - started
        return {"epoch": epoch, "loss": float(totals[0]) / world, "lr": strategy.lr(), "grad_norm": norm,
                "samples_per_s": float(totals[1]) / seconds, "seconds": seconds}

    step_through_epochs(strategy, state, history, total=total, step=step, files=files, rank=rank, tag="encoder",
                        epoch_batches=lambda epoch: epoch_batches(len(corpus.train), run.batch_size, seed, epoch,
                                                                  rank, world),
                        checkpoint_every=params.train.checkpoint_every_steps)
    if rank == 0:
        state["after"] = evaluate()
    state["final"] = True
    report_files(files(), strategy, rank, {"step": state["step"], "final": True},
                 checkpoint_name(state, final=True), export=export)
