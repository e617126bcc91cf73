"""The instruction loader on Ray Data: rows -> map_batches(encode_rows) ->
iter_torch_batches(collate_fn=RayCollate(...)). Encoding runs in Ray tasks row by row (unpadded, so
rows of different blocks batch together); padding happens in the collate function."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

from deepmolm.train.data import cached_pixels, collate, encode_example


def encode_rows(batch: dict[str, np.ndarray], *, shards: str, tokenizer_dir: str, image_size: int,
                image_tokens: int, max_length: int) -> dict[str, np.ndarray]:
    """For `Dataset.map_batches(encode_rows, fn_kwargs=...)`: instruction rows (numpy columns) ->
    per-row token ids, labels, uint8 pixels and E3FP, unpadded, so that rows from different blocks
    can be batched together; `RayCollate` pads them. A task, not an actor: Ray keeps its worker
    processes, so the imports and the tokenizer (cached per process) are paid once, not per epoch."""
    tokenizer = _tokenizer(tokenizer_dir)
    encoded = [encode_example(str(p), str(r), tokenizer, image_tokens, max_length)
               for p, r in zip(batch["prompt"], batch["response"])]
    pixels = [cached_pixels(str(Path(shards) / part), int(row), image_size)
              for part, row in zip(batch["image_part"], batch["image_row"])]
    # flat int32 per row, empty without a conformer: one tensor type for every block (Ray cannot
    # unify a column that is None in some blocks and arrays in others); RayCollate reshapes
    e3fp = [np.zeros(0, np.int32) if m is None else np.concatenate([np.asarray(atom, np.int32) for atom in m])
            for m in batch["e3fp"]]
    return {"input_ids": _ragged([e["input_ids"] for e in encoded]), "labels": _ragged([e["labels"] for e in encoded]),
            "pixels": torch.stack(pixels).numpy(), "e3fp": _ragged(e3fp)}


@lru_cache(maxsize=2)
def _tokenizer(directory: str):
    from deepmolm.model.tokenizer import load_tokenizer

    return load_tokenizer(Path(directory))


def _ragged(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = [np.asarray(v) for v in values]
    return out


class RayCollate(NumpyBatchCollateFn):
    """`iter_torch_batches(collate_fn=RayCollate(pad_id, levels))`: unpadded rows -> padded tensors."""

    def __init__(self, pad_id: int, e3fp_levels: int):
        self.pad_id, self.e3fp_levels = pad_id, e3fp_levels

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        rows = [{"input_ids": list(batch["input_ids"][i]), "labels": list(batch["labels"][i]),
                 "pixels": torch.as_tensor(np.asarray(batch["pixels"][i])),
                 "e3fp": self._rows(batch["e3fp"][i])} for i in range(len(batch["input_ids"]))]
        return collate(rows, self.pad_id, self.e3fp_levels)

    def _rows(self, flat) -> list | None:
        """A flat E3FP array as encode_rows wrote it -> per-atom rows (None when empty)."""
        flat = np.asarray(flat)
        return flat.reshape(-1, self.e3fp_levels).tolist() if flat.size else None
