"""The instruction loader: samples/s per CPU core, 1 process vs a DataLoader with N worker processes.

Reads a real instruction set (the newest under paths.instructions_dir unless --instructions), in
shuffled order as training does, with a BPE tokenizer trained on its texts, at the preset's image
size. Prints samples/s and samples/s per core, and the ratio (N workers vs 1) in one run.

    python -m benchmarks.loader [--preset tiny] [--samples 600] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from functools import partial
from pathlib import Path

import torch

from deepmolm.config import load_params
from deepmolm.data.instructions import instruction_shards, read_instructions
from deepmolm.models.deepmolm.deep_encoder import DeepEncoderSpec
from deepmolm.models.deepmolm.drawing_store import build_drawings
from deepmolm.models.deepmolm.tokenizer import train_bpe
from deepmolm.training.deepmolm.data import InstructionDataset, collate, model_inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instructions", type=Path)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--samples", type=int, default=600)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    params = load_params("params.yaml", [])
    directory = args.instructions or max(params.paths.instructions_dir.glob("*/*/examples.parquet"),
                                         key=lambda p: p.stat().st_mtime).parent
    texts = read_instructions(directory).select(["prompt", "response"]).to_pylist()
    tokenizer = train_bpe([text for r in texts[:5000] for text in (r["prompt"], r["response"])], 2000)
    encoder = params.model.presets[args.preset].encoder
    spec = DeepEncoderSpec(image_size=encoder.image_size, patch_size=encoder.patch_size)
    drawings = build_drawings(instruction_shards(directory), spec.image_size, params.paths.cache_dir / "drawings")
    dataset = InstructionDataset(directory, tokenizer, drawings=drawings, image_tokens=spec.tokens, max_length=1024)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(dataset), generator=generator)[: args.samples].tolist()
    subset = torch.utils.data.Subset(dataset, order)
    collate_fn = partial(collate, pad_id=tokenizer.pad_token_id, e3fp_levels=params.featurize.e3fp.level + 1)

    def run(workers: int) -> float:
        loader = torch.utils.data.DataLoader(subset, batch_size=args.batch_size, num_workers=workers,
                                             collate_fn=collate_fn)
        started = time.perf_counter()
        count = sum(len(model_inputs(batch, spec)["input_ids"]) for batch in loader)
        assert count == len(subset)
        return count / (time.perf_counter() - started)

    one = run(0)
    many = run(args.workers)
    print(f"{args.preset} preset, {spec.image_size} px images, shuffled, batch {args.batch_size}")
    print(f"1 process: {one:.1f} samples/s")
    print(f"{args.workers} worker processes: {many:.1f} samples/s ({many / args.workers:.1f} per core)")
    print(f"scaling: {many / one:.2f}x with {args.workers} workers (efficiency {many / one / args.workers:.2f})")
    print(json.dumps({"machine": f"{platform.machine()}, {os.cpu_count()} cores", "preset": args.preset,
                      "image_size": spec.image_size, "samples": len(subset), "one_process": round(one, 1),
                      "workers": args.workers, "with_workers": round(many, 1),
                      "per_core": round(many / args.workers, 1)}))


if __name__ == "__main__":
    main()
