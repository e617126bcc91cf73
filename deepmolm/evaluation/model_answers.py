"""A trained DeepMoLM answering the held-out instruction examples, in batches.

The examples are the instruction set's rows of the evaluation splits, so the model sees exactly what
training showed it for other molecules: the same drawing, E3FP identifiers, prompt template and
tokenizer. Generation is `deepmolm predict`'s, in batches (prompts padded on the left).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import torch

from deepmolm.data.instructions import instruction_shards, iter_examples
from deepmolm.evaluation.predictions import Prediction
from deepmolm.models.deepmolm.generation import generate_answers, load_checkpoint
from deepmolm.models.deepmolm.processing import cached_pixels, e3fp_batch

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


def answer_examples(model_dir: Path, instructions: Path, rows: list[dict], *, batch_size: int,
                    decoding: Callable[[str], dict], advance: Callable[[int], None] = lambda n: None,
                    drawing: Callable[[dict], torch.Tensor] | None = None) -> list[Prediction]:
    """One Prediction per row (id = example_id), in the rows' order. `decoding(task)` is what
    `generate_answers` is told for the task's answers (generation.task_decoding: a property answer
    is a sentence, a caption a paragraph). The geometry is each row's `e3fp`; the drawing its shard
    image, or `drawing(row)` ([3, S, S] uint8) when given (evaluate's drawing store, robustness's
    perturbed drawings)."""
    model, tokenizer = load_checkpoint(model_dir)
    size, levels = model.config.encoder_spec().image_size, model.config.fusion_spec().e3fp_levels
    shards = instruction_shards(instructions)
    out: list[Prediction] = []
    for task in sorted({r["task"] for r in rows}):
        # one task per batch: its answers share a length budget
        of_task = [r for r in rows if r["task"] == task]
        for start in range(0, len(of_task), batch_size):
            batch = of_task[start:start + batch_size]
            pixels = torch.stack([drawing(r) if drawing else cached_pixels(str(shards / r["image_part"]), r["image_row"], size)
                                  for r in batch])
            geometry = e3fp_batch([r["e3fp"] for r in batch], levels)
            answers = generate_answers(model, tokenizer, [r["prompt"] for r in batch], pixels, geometry, **decoding(task))
            out += [Prediction(id=row["example_id"], reference=row["response"], prediction=text, property=row["property"])
                    for row, text in zip(batch, answers)]
            advance(len(batch))
    order = {r["example_id"]: i for i, r in enumerate(rows)}
    return sorted(out, key=lambda p: order[p.id])
