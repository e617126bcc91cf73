"""Which instruction rows a stage trains on, which it holds out, and which it leaves out.

Rows of `train.splits` and the stage's tasks; of those, the molecules that `train.holdout` picks
are held out (their examples give the held-out loss of every epoch and are what the recipe was tuned
on), and an example whose tokens do not fit `model.max_length` is left out, counted, rather than cut.
The driver decides this once, reading the table a row group at a time, and hands every worker the
same `RowSelection`: positions and token counts, never the rows themselves (each worker reads the
rows it needs from the Parquet file, data.ExampleRows), so nothing the driver holds or sends grows
with the text or the fingerprints of the set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepmolm.config import Params
from deepmolm.data.instructions import held_out, iter_examples
from deepmolm.models.deepmolm.processing import example_lengths, number_slot

SELECTION_COLUMNS = ["cid", "task", "split", "prompt", "response", "answer_value"]


@dataclass(frozen=True)
class RowSelection:
    """Examples by their row in examples.parquet, with their token counts: `tokens` (prompt, image
    and response; what batches group by, train.length_group_steps) and `response_tokens` (what the
    loss weighs by); `slot`: the response's number is a <num> slot (a model with a number head)."""

    position: np.ndarray
    tokens: np.ndarray
    response_tokens: np.ndarray
    slot: np.ndarray

    def __len__(self) -> int:
        return len(self.position)

    @classmethod
    def of(cls, chosen: list[tuple[int, int, int, int]]) -> RowSelection:
        columns = np.asarray(chosen, dtype=np.int64).reshape(-1, 4)
        return cls(position=columns[:, 0], tokens=columns[:, 1], response_tokens=columns[:, 2],
                   slot=columns[:, 3].astype(bool))


def stage_rows(params: Params, stage: int, instructions: Path, tokenizer, image_tokens: int) -> dict:
    """{"train": RowSelection, "holdout": RowSelection, "counts": {...}} for one stage, in table order."""
    tasks = set(params.train.stage(stage).tasks)
    splits = None if params.train.splits is None else set(params.train.splits)
    holdout, limit, slots = params.train.holdout, params.model.max_length, params.model.number_head
    chosen: dict[str, list[tuple[int, int, int]]] = {"train": [], "holdout": []}
    molecules: dict[str, set[int]] = {"train": set(), "holdout": set()}
    offset, candidates = 0, 0
    for batch in iter_examples(instructions, SELECTION_COLUMNS):
        rows = batch.to_pydict()
        wanted = [i for i, (task, split) in enumerate(zip(rows["task"], rows["split"]))
                  if task in tasks and (splits is None or split in splits)]
        with_slot = [slots and rows["answer_value"][i] is not None for i in wanted]
        responses = [number_slot(rows["response"][i], rows["answer_value"][i]) if slot else rows["response"][i]
                     for i, slot in zip(wanted, with_slot)]
        lengths = example_lengths([rows["prompt"][i] for i in wanted], responses, tokenizer, image_tokens)
        for i, slot, (whole, response) in zip(wanted, with_slot, lengths):
            if whole <= limit:
                cid = rows["cid"][i]
                part = "holdout" if held_out(cid, holdout.fraction, holdout.seed) else "train"
                chosen[part].append((offset + i, whole, response, int(slot)))
                molecules[part].add(cid)
        offset, candidates = offset + batch.num_rows, candidates + len(wanted)
    counts = {"rows": candidates, "train": len(chosen["train"]), "holdout": len(chosen["holdout"]),
              "too_long": candidates - len(chosen["train"]) - len(chosen["holdout"]),
              "train_molecules": len(molecules["train"]), "holdout_molecules": len(molecules["holdout"])}
    return {**{part: RowSelection.of(rows) for part, rows in chosen.items()}, "counts": counts}
