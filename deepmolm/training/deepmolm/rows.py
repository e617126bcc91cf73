"""Which instruction rows a stage trains on, which it holds out, and which it leaves out.

Rows of `train.splits` and the stage's tasks; of those, the molecules that `train.holdout` picks
are held out (their examples give the held-out loss of every epoch and are what the recipe was tuned
on), and an example whose tokens do not fit `model.max_length` is left out, counted, rather than cut.
The driver decides this once and hands the rows to every worker, so all agree on the set.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from deepmolm.config import Params
from deepmolm.data.instructions import EXAMPLES, held_out
from deepmolm.models.deepmolm.processing import example_lengths

ROW_COLUMNS = ["cid", "task", "property", "prompt", "response", "image_part", "image_row", "e3fp"]


def row_filter(params: Params, tasks: list[str]) -> list[tuple]:
    rows = [("task", "in", list(tasks))]
    if params.train.splits is not None:
        rows.append(("split", "in", list(params.train.splits)))
    return rows


def stage_rows(params: Params, stage: int, instructions: Path, tokenizer, image_tokens: int) -> dict:
    """{"train": rows, "holdout": rows, "counts": {...}} for one stage, rows as dicts in table order,
    each with its token counts (whole, response)."""
    table = pq.read_table(Path(instructions) / EXAMPLES, columns=ROW_COLUMNS,
                          filters=row_filter(params, params.train.stage(stage).tasks))
    rows = table.to_pylist()
    lengths = example_lengths([r["prompt"] for r in rows], [r["response"] for r in rows], tokenizer, image_tokens)
    holdout = params.train.holdout
    chosen: dict[str, list[dict]] = {"train": [], "holdout": []}
    for row, (whole, response) in zip(rows, lengths):
        if whole <= params.model.max_length:
            # batches group by the first (train.length_group_steps), the loss weighs by the second
            row["tokens"], row["response_tokens"] = whole, response
            chosen["holdout" if held_out(row["cid"], holdout.fraction, holdout.seed) else "train"].append(row)
    counts = {"rows": len(rows), "train": len(chosen["train"]), "holdout": len(chosen["holdout"]),
              "too_long": len(rows) - len(chosen["train"]) - len(chosen["holdout"]),
              "train_molecules": len({r["cid"] for r in chosen["train"]}),
              "holdout_molecules": len({r["cid"] for r in chosen["holdout"]})}
    return {**chosen, "counts": counts}
