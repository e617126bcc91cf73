"""Length-grouped batches (`train.length_group_steps`) against a plain shuffle, in one run.

Takes stage 2's real training rows (train.splits minus the holdout, `train/rows.py`) of an
instruction set with its trained tokenizer, deals one epoch both ways (`data.epoch_batches`, the
configured workers and micro-batch) and prints the padded tokens of each and their ratio. Then it
times a forward and backward of the preset's randomly initialised model on the first `--steps`
batches of rank 0 each way (one thread, as a 2-core training worker runs), so the step-time ratio
sits beside the token ratio: the encoder's cost per image does not shrink with padding.

    python -m benchmarks.length_groups --instructions data/instructions/chebi20 --tokenizer models/tokenizer
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from functools import partial
from pathlib import Path

import torch

from deepmolm.config import load_params
from deepmolm.data.instructions import instruction_shards
from deepmolm.models.deepmolm.deep_encoder import DeepEncoderSpec
from deepmolm.models.deepmolm.drawing_store import build_drawings
from deepmolm.models.deepmolm.modeling import DeepMoLMForCausalLM
from deepmolm.models.deepmolm.presets import model_config
from deepmolm.models.deepmolm.tokenizer import image_token_id, load_tokenizer
from deepmolm.training.deepmolm.data import InstructionDataset, collate, epoch_batches, model_inputs
from deepmolm.training.deepmolm.rows import stage_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instructions", type=Path, required=True, help="an instruction set version directory or its parent")
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--group-steps", type=int, default=50)
    parser.add_argument("--steps", type=int, default=20, help="batches timed each way")
    parser.add_argument("--set", "-S", action="append", default=[], help="params override, as the CLI's")
    args = parser.parse_args()
    params = load_params("params.yaml", args.set)
    directory = args.instructions
    if not (directory / "examples.parquet").is_file():
        directory = directory / (directory / "LATEST").read_text().strip()
    tokenizer = load_tokenizer(args.tokenizer)
    config = model_config(params, params.model.preset, vocab_size=len(tokenizer), image_token_id=image_token_id(tokenizer))
    spec = config.encoder_spec()
    rows = stage_rows(params, 2, directory, tokenizer, spec.tokens)["train"]
    lengths = rows.tokens.tolist()
    train = params.train
    deal = partial(epoch_batches, len(rows), seed=train.seed, epoch=0, world=train.scaling.workers,
                   batch_size=train.micro_batch_size, lengths=lengths)
    ways = {"plain": 0, "grouped": args.group_steps}
    batches = {way: [deal(rank=r, group_steps=g) for r in range(train.scaling.workers)] for way, g in ways.items()}
    padded = {way: sum(max(lengths[i] for i in b) * len(b) for worker in workers for b in worker)
              for way, workers in batches.items()}

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = DeepMoLMForCausalLM(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    drawings = build_drawings(instruction_shards(directory), spec.image_size, params.paths.cache_dir / "drawings")
    dataset = InstructionDataset(directory, tokenizer, drawings=drawings, image_tokens=spec.tokens,
                                 max_length=params.model.max_length, rows=rows)
    pad = partial(collate, pad_id=tokenizer.pad_token_id, e3fp_levels=params.featurize.e3fp.level + 1)

    def seconds_per_step(way: str) -> float:
        inputs = [model_inputs(pad([dataset[i] for i in b]), DeepEncoderSpec()) for b in batches[way][0][: args.steps]]
        started = time.perf_counter()
        for batch in inputs:
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return (time.perf_counter() - started) / len(inputs)

    seconds_per_step("plain")  # warm-up: allocator, kernels
    step = {way: seconds_per_step(way) for way in ways}
    print(json.dumps({
        "machine": platform.processor() or platform.machine(), "preset": params.model.preset, "rows": len(rows),
        "workers": train.scaling.workers, "micro_batch": train.micro_batch_size, "group_steps": args.group_steps,
        "tokens": sum(lengths), "padded_tokens": padded,
        "padded_ratio": round(padded["plain"] / padded["grouped"], 3),
        "seconds_per_step": {k: round(v, 3) for k, v in step.items()},
        "step_ratio": round(step["plain"] / step["grouped"], 3), "timed_steps": args.steps}))


if __name__ == "__main__":
    main()
