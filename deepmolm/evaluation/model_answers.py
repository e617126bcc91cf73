"""A trained DeepMoLM answering the held-out instruction examples, in batches.

The examples are the instruction set's rows of the evaluation splits, so the model sees exactly what
training showed it for other molecules: the same drawing, E3FP identifiers, prompt template and
tokenizer. Generation is `deepmolm predict`'s, in batches (prompts padded on the left).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from deepmolm.data.instructions import instruction_shards
from deepmolm.evaluation.predictions import Prediction
from deepmolm.models.deepmolm.generation import generate_answers, load_checkpoint
from deepmolm.models.deepmolm.processing import cached_pixels, e3fp_batch


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
