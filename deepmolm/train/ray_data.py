"""The instruction loader on Ray Data: read_parquet -> map_batches(RayBatchEncoder) ->
iter_torch_batches(collate_fn=RayCollate(...)). Encoding runs in Ray workers row by row (unpadded, so
rows of different blocks batch together); padding happens in the collate function."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

from deepmolm.instructions import EXAMPLES
from deepmolm.train.data import cached_pixels, collate, encode_example


def examples_path(directory: Path) -> Path:
    """The Parquet file Ray Data reads (ray.data.read_parquet) before map_batches(RayBatchEncoder)."""
    return Path(directory) / EXAMPLES


class RayBatchEncoder:
    """For `Dataset.map_batches` (a callable class: one per Ray worker, tokenizer loaded once):
    instruction rows (numpy columns) -> per-row token ids, labels, uint8 pixels and E3FP, unpadded,
    so that rows from different blocks can be batched together; `RayCollate` pads them in
    `iter_torch_batches(collate_fn=RayCollate(...))`."""

    def __init__(self, shards: str, tokenizer_dir: str, image_size: int, image_tokens: int, max_length: int):
        from deepmolm.model.tokenizer import load_tokenizer

        self.shards, self.tokenizer = Path(shards), load_tokenizer(Path(tokenizer_dir))
        self.image_size, self.image_tokens, self.max_length = image_size, image_tokens, max_length

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        encoded = [encode_example(str(p), str(r), self.tokenizer, self.image_tokens, self.max_length)
                   for p, r in zip(batch["prompt"], batch["response"])]
        pixels = [cached_pixels(str(self.shards / part), int(row), self.image_size)
                  for part, row in zip(batch["image_part"], batch["image_row"])]
        e3fp = [None if m is None else np.stack([np.asarray(atom, dtype=np.int32) for atom in m]) for m in batch["e3fp"]]
        return {"input_ids": _ragged([e["input_ids"] for e in encoded]), "labels": _ragged([e["labels"] for e in encoded]),
                "pixels": torch.stack(pixels).numpy(), "e3fp": _ragged(e3fp)}


def _ragged(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = [None if v is None else np.asarray(v) for v in values]
    return out


class RayCollate(NumpyBatchCollateFn):
    """`iter_torch_batches(collate_fn=RayCollate(pad_id, levels))`: unpadded rows -> padded tensors."""

    def __init__(self, pad_id: int, e3fp_levels: int):
        self.pad_id, self.e3fp_levels = pad_id, e3fp_levels

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        rows = [{"input_ids": list(batch["input_ids"][i]), "labels": list(batch["labels"][i]),
                 "pixels": torch.as_tensor(np.asarray(batch["pixels"][i])),
                 "e3fp": _rows(batch["e3fp"][i])} for i in range(len(batch["input_ids"]))]
        return collate(rows, self.pad_id, self.e3fp_levels)


def _rows(e3fp) -> list | None:
    """An E3FP array as Ray hands it back (an array of arrays, or None) -> a list of rows."""
    if e3fp is None or len(e3fp) == 0:
        return None
    return [list(np.asarray(atom)) for atom in e3fp]
