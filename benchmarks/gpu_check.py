"""The device check to run when a GPU is lent (issue 43): the `gpu_small` recipe's training step as a
Ray Train worker takes it (DeepSpeed ZeRO-2, bf16, AdamW, the stage's trainable parts), on the
`small` preset from random weights (no weights reach that machine), a few hundred steps of
synthetic batches at the preset's shapes. Prints MFU, peak GPU memory, samples/s and the loss at the
start and the end, as one JSON line after the table.

FLOPs are counted by torch.utils.flop_counter on one step (as benchmarks/train_throughput.py does),
so MFU = counted FLOPs x steps/s / peak (989 TFLOP/s: H100 and H200 dense bf16 by specification).
The whole check is sized to finish within 8 minutes on one H100: `--minutes` stops it early.

    python -m benchmarks.gpu_check                 # on the GPU machine
    python -m benchmarks.gpu_check --dry           # anywhere: tiny preset, fp32, CPU, 3 steps (the suite runs it)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.train_throughput import batch, build
from deepmolm.config import load_params
from deepmolm.training.strategy import DeepSpeedStrategy, deepspeed_config

PEAK_TFLOPS = 989.0


def single_process_group(backend: str) -> None:
    """A world of one, as DeepSpeed expects one (Ray Train makes it on a cluster)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    torch.distributed.init_process_group(backend, rank=0, world_size=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry", action="store_true", help="CPU, tiny preset, fp32, 3 steps: that the script runs")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--text-tokens", type=int, default=192)
    parser.add_argument("--minutes", type=float, default=6.0, help="stop stepping after this long")
    args = parser.parse_args()

    gpu = torch.cuda.is_available() and not args.dry
    device = torch.device("cuda", 0) if gpu else torch.device("cpu")
    preset, steps = ("small", args.steps) if not args.dry else ("tiny", 3)
    size, text_tokens = (args.batch, args.text_tokens) if gpu else (2, 16)
    params = load_params("params.yaml", ["recipe=gpu_small", f"model.preset={preset}",
                                         *([] if gpu else ["train.precision=fp32"])])
    bf16 = gpu and params.train.precision in ("bf16", "auto")
    single_process_group("nccl" if gpu else "gloo")
    torch.manual_seed(0)
    vocab = params.model.presets[preset].language.vocab_size
    model, counts = build(params, preset, None, 2, device, vocab)
    stage = params.train.stage(2)
    config = deepspeed_config(params.train, bf16)
    config.update(train_micro_batch_size_per_gpu=size, gradient_accumulation_steps=1, train_batch_size=size)
    strategy = DeepSpeedStrategy(model, params.train, stage, steps, device, bf16, config, rebuild=lambda: None)
    inputs = batch(model, size, text_tokens, device)

    def sync() -> None:
        if gpu:
            torch.cuda.synchronize()

    first, _ = strategy.step([inputs], [1.0])  # warm-up: kernels, optimizer state
    with FlopCounterMode(display=False) as counter:
        strategy.step([inputs], [1.0])
    flops = counter.get_total_flops()
    if gpu:
        torch.cuda.reset_peak_memory_stats(device)
    sync()
    started, taken, last = time.perf_counter(), 0, first
    while taken < steps - 2 and time.perf_counter() - started < 60 * args.minutes:
        last, _ = strategy.step([inputs], [1.0])
        taken += 1
    sync()
    seconds = time.perf_counter() - started
    per_s = taken / seconds if taken else 0.0
    peak = PEAK_TFLOPS * 1e12 if gpu else None
    report = {
        "device": torch.cuda.get_device_name(device) if gpu else "cpu", "preset": preset, "bf16": bf16,
        "zero_stage": config["zero_optimization"]["stage"], "batch": size,
        "tokens_per_sample": int(inputs["input_ids"].shape[1]), "trainable": counts["trainable"], "frozen": counts["frozen"],
        "steps": taken + 2, "seconds": round(seconds, 2), "samples_per_s": round(per_s * size, 2),
        "gflops_per_step": round(flops / 1e9, 3), "achieved_tflops": round(flops * per_s / 1e12, 2),
        "mfu": round(flops * per_s / peak, 4) if peak else None,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if gpu else None,
        "loss_first": round(first, 4), "loss_last": round(last, 4),
    }
    for key, value in report.items():
        print(f"{key:>20}  {value}")
    print(json.dumps(report))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
