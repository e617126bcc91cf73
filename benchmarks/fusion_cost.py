"""What the Fusion Projector's extras cost a training step: the cpu preset with `e3fp_sum` against the
same preset without it, stage 2, on synthetic batches of the preset's shapes (train_throughput's).

The two models' steps alternate, so a load change on the machine falls on both alike; the ratio of
their median step times is printed. `./dev full` was last timed without e3fp_sum (39.8 minutes of
training); this ratio says what the extra projection adds to that.

    python -m benchmarks.fusion_cost --steps 30 --batch 8
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from benchmarks.train_throughput import batch, build, train_step
from deepmolm.config import load_params
from deepmolm.training.strategy import param_groups


def step_seconds(model, optimizer, inputs: dict) -> float:
    started = time.perf_counter()
    train_step(model, optimizer, inputs, bf16=False)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--text-tokens", type=int, default=96)
    args = parser.parse_args()
    device = torch.device("cpu")
    torch.manual_seed(0)
    runs = {}
    for name, on in (("with e3fp_sum", True), ("without", False)):
        params = load_params("params.yaml", [f"model.presets.cpu.fusion.e3fp_sum={str(on).lower()}"])
        model, _ = build(params, "cpu", None, 2, device, params.model.presets["cpu"].language.vocab_size)
        model.train()
        stage = params.train.stage(2)
        optimizer = torch.optim.AdamW(param_groups(model, stage.weight_decay), lr=stage.learning_rate)
        runs[name] = {"model": model, "optimizer": optimizer, "inputs": batch(model, args.batch, args.text_tokens, device),
                      "seconds": []}
    for step in range(args.steps + 2):  # two warm-up steps each, not counted
        for run in runs.values():
            seconds = step_seconds(run["model"], run["optimizer"], run["inputs"])
            if step >= 2:
                run["seconds"].append(seconds)
    medians = {name: statistics.median(run["seconds"]) for name, run in runs.items()}
    print(json.dumps({"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
                      "steps": args.steps, "batch": args.batch, "median_step_s": {k: round(v, 4) for k, v in medians.items()},
                      "ratio": round(medians["with e3fp_sum"] / medians["without"], 3)}))


if __name__ == "__main__":
    main()
