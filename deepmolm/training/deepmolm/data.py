"""Instruction examples -> batches of model tensors, and the order in which a worker sees them.

A row refers to its drawing by shard part and row, read at the model's size from the shard version's
drawing store (models/deepmolm/drawing_store.py: shrunk once, before training); it stays uint8
until `model_inputs` moves the batch to its device and normalises it with CLIP's mean and std there.
Labels are -100 on the prompt and image positions and the response ids (end token included) after
them (`processing.encode_example`). A batch pads token sequences on the right (pad id, label -100,
attention 0) and E3FP arrays to the batch's largest molecule with -1, the projector's padding value.

With `withhold_e3fp`, a seeded share of the training examples lose their E3FP each epoch (modality
dropout): the model must then answer from the drawing alone, as it must for a molecule without a
conformer, instead of learning that geometry is always there to copy (`withheld`).

`epoch_batches` is the order: a seeded permutation of every row per epoch, dealt to the workers,
so a molecule's examples are spread over the epoch and a resumed run sees exactly the batches an
uninterrupted one would.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from deepmolm.data.instructions import EXAMPLES, instruction_shards
from deepmolm.data.shards.parts import read_manifest
from deepmolm.models.deepmolm.deep_encoder import DeepEncoderSpec
from deepmolm.models.deepmolm.drawing_store import Drawings
from deepmolm.models.deepmolm.processing import IGNORE, e3fp_batch, encode_example, normalise_pixels
from deepmolm.training.deepmolm.rows import RowSelection


def label_tokens(labels: torch.Tensor) -> int:
    """The positions a causal LM's loss counts in a batch (its labels shifted by one)."""
    return int((labels[:, 1:] != IGNORE).sum())


def token_weight(labels: torch.Tensor, labels_per_batch: float) -> float:
    """What a batch's mean token loss is multiplied by in its step: its label tokens over the mean per
    batch of the whole training set. Summed over an epoch, the objective is then the total token loss
    over a constant, whichever batches the rows fall in: grouping by length (short property
    answers in one batch, long captions in another) reorders the rows but reweights no token."""
    return label_tokens(labels) / labels_per_batch


def epoch_batches(rows: int, *, seed: int, epoch: int, rank: int, world: int, batch_size: int,
                  lengths: list[int] | None = None, group_steps: int = 0) -> list[list[int]]:
    """The row indices of each of a worker's batches in one epoch, a function of these arguments only
    (so a resume skips exactly the batches already trained on).

    One seeded permutation of every row, cut into steps of `world * batch_size` rows, each step's rows
    dealt round-robin to the workers; every worker gets `rows // world // batch_size` batches. With
    `lengths` and `group_steps`, each run of `group_steps` steps of the permutation is sorted by length
    and the steps are then shuffled: a batch pads to lengths like its own (a property answer is a
    third of a caption), and the workers of one step wait on equally long batches."""
    rng = np.random.default_rng([seed, epoch])
    step_rows = world * batch_size
    steps = rows // step_rows
    order = rng.permutation(rows)[: steps * step_rows]
    if lengths is not None and group_steps > 0:
        size = np.asarray(lengths)
        group = group_steps * step_rows
        order = np.concatenate([chunk[np.argsort(-size[chunk], kind="stable")]
                                for chunk in np.split(order, range(group, len(order), group))])
        step_order = rng.permutation(steps)
    else:
        step_order = np.arange(steps)
    return [order[s * step_rows:(s + 1) * step_rows][rank::world].tolist() for s in step_order]


def withheld(fraction: float, *, seed: int, epoch: int, position: int) -> bool:
    """Whether the example at `position` of the instruction set trains without its E3FP this epoch: a
    function of these arguments only, so a resumed run withholds from the same examples."""
    return fraction > 0 and np.random.default_rng([seed, epoch, position]).random() < fraction


def collate(examples: list[dict], pad_id: int, e3fp_levels: int) -> dict[str, torch.Tensor]:
    longest = max(len(e["input_ids"]) for e in examples)
    numbers = torch.tensor([float("nan") if e.get("number") is None else e["number"] for e in examples],
                           dtype=torch.float32)
    input_ids = torch.full((len(examples), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), longest), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(examples), longest), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        input_ids[i, :n] = torch.as_tensor(e["input_ids"])
        labels[i, :n] = torch.as_tensor(e["labels"])
        attention[i, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels,
            "pixels": torch.stack([e["pixels"] for e in examples]),
            "e3fp": e3fp_batch([e["e3fp"] for e in examples], e3fp_levels), "numbers": numbers}


def model_inputs(batch: dict[str, torch.Tensor], spec: DeepEncoderSpec, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """A collated batch on `device`, its pixels normalised there as `spec` (the encoder's weights)
    says: what the model's forward takes."""
    moved = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
    moved["pixel_values"] = normalise_pixels(moved.pop("pixels"), spec)
    return moved


EXAMPLE_ROW_COLUMNS = ["prompt", "response", "answer_value", "image_part", "image_row", "e3fp"]


class ExampleRows:
    """Random access to examples.parquet by row: the row group that holds it is decoded and the
    last few are kept per process (`_row_group`), so a worker's memory is bounded by the group size
    (instructions.EXAMPLES_PER_GROUP), not by the set's."""

    COLUMNS = EXAMPLE_ROW_COLUMNS

    def __init__(self, path: Path):
        self.path = str(path)
        metadata = pq.read_metadata(self.path)
        self.starts = np.cumsum([0] + [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def row(self, position: int) -> dict:
        if not 0 <= position < len(self):
            raise IndexError(f"row {position} of {self.path}, which has {len(self)}")
        group = int(np.searchsorted(self.starts, position, side="right")) - 1
        return _row_group(self.path, group).slice(position - int(self.starts[group]), 1).to_pylist()[0]


@lru_cache(maxsize=8)
def _row_group(path: str, group: int) -> pa.Table:
    """One decoded row group (a few hundred kB), kept while the epoch's rows keep landing in it."""
    return _parquet_file(path).read_row_group(group, columns=EXAMPLE_ROW_COLUMNS)


@lru_cache(maxsize=4)
def _parquet_file(path: str) -> pq.ParquetFile:
    """The file with its footer parsed once per process (a thousand row groups at 100,000 molecules)."""
    return pq.ParquetFile(path)


class InstructionDataset(torch.utils.data.Dataset):
    """Instruction examples (every row of an instruction set directory, or a stage's selection) with
    the drawings of its shard version, read from the set's file and the drawing store as they are
    asked for. With `number_slots` (a model with a number head), a property answer's number is a
    <num> slot and its value the example's `number`. `withhold_e3fp` (a share, drawn per example and
    `epoch` with `seed`) trains that share without geometry; set `epoch` before each epoch's loader."""

    def __init__(self, directory: Path, tokenizer, *, drawings: Path, image_tokens: int, max_length: int,
                 rows: RowSelection | None = None, number_slots: bool = False, withhold_e3fp: float = 0.0,
                 seed: int = 0):
        self.directory = Path(directory)
        self.examples = ExampleRows(self.directory / EXAMPLES)
        self.drawings = Drawings(drawings)
        shard_version = read_manifest(instruction_shards(self.directory))["version"]
        if self.drawings.shard_version != shard_version:
            raise ValueError(f"the drawing store {drawings} is of shard version {self.drawings.shard_version}; "
                             f"instruction set {directory} uses {shard_version}")
        self.positions = rows.position if rows is not None else np.arange(len(self.examples))
        self.tokenizer, self.image_tokens, self.max_length = tokenizer, image_tokens, max_length
        self.number_slots = number_slots
        self.withhold_e3fp, self.seed, self.epoch = withhold_e3fp, seed, 0

    def __len__(self) -> int:
        return len(self.positions)

    def withholding(self, share: float) -> InstructionDataset:
        """The same examples with another share of them without E3FP (1.0: the drawing alone)."""
        other = copy.copy(self)
        other.withhold_e3fp = share
        return other

    def __getitem__(self, index: int) -> dict:
        position = int(self.positions[index])
        row = self.examples.row(position)
        number = row["answer_value"] if self.number_slots else None
        without = withheld(self.withhold_e3fp, seed=self.seed, epoch=self.epoch, position=position)
        return {**encode_example(row["prompt"], row["response"], self.tokenizer, self.image_tokens, self.max_length,
                                 number=number),
                "pixels": self.drawings.pixels(row["image_part"], row["image_row"]),
                "e3fp": None if without else row["e3fp"]}
