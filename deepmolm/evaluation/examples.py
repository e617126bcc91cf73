"""The held-out (or training) rows of an instruction set that an evaluation reads, chosen with
pyarrow alone, so a reader of the rows needs no model."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from deepmolm.data.instructions import iter_examples

EXAMPLE_COLUMNS = ["example_id", "cid", "split", "task", "property", "prompt", "response", "answer_value",
                   "image_part", "image_row", "e3fp"]


def examples_of_splits(instructions: Path, splits: list[str], tasks: list[str], max_per_task: int | None,
                       columns: list[str] = EXAMPLE_COLUMNS) -> list[dict]:
    """Rows of `splits` and `tasks` (the held-out ones, or the training ones for the baseline's pool),
    in table order (a molecule's examples stay together), the first `max_per_task` of each task when
    capped; read a row group at a time, so only the chosen rows' `columns` are held."""
    wanted = {"split": pa.array(splits, type=pa.string()), "task": pa.array(tasks, type=pa.string())}
    rows = []
    for batch in iter_examples(instructions, sorted({*columns, "split", "task"})):
        keep = pc.and_(pc.is_in(batch.column("split"), value_set=wanted["split"]),
                       pc.is_in(batch.column("task"), value_set=wanted["task"]))
        rows += batch.filter(keep).select(columns).to_pylist()
    return capped(rows, tasks, max_per_task)


def capped(rows: list[dict], tasks: list[str], max_per_task: int | None) -> list[dict]:
    """The first `max_per_task` rows of each task (all with None), in their order."""
    out, taken = [], dict.fromkeys(tasks, 0)
    for row in rows:
        if max_per_task is None or taken[row["task"]] < max_per_task:
            taken[row["task"]] += 1
            out.append(row)
    return out
