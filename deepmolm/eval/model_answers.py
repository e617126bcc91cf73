"""A trained DeepMoLM answering the held-out instruction examples, in batches.

The examples are the instruction set's rows of the evaluation splits, so the model sees exactly what
training showed it for other molecules: the same drawing, E3FP identifiers, prompt template and
tokenizer. Prompts are padded on the left, so every answer starts right after its own prompt.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import torch

from deepmolm.eval.predictions import Prediction
from deepmolm.instructions import instruction_shards, read_instructions
from deepmolm.model.molm import DeepMoLMForCausalLM
from deepmolm.model.tokenizer import load_tokenizer
from deepmolm.train.data import cached_pixels, normalise_pixels, prompt_token_ids

EXAMPLE_COLUMNS = ["example_id", "cid", "split", "task", "property", "prompt", "response", "image_part", "image_row", "e3fp"]


def examples_of_splits(instructions: Path, splits: list[str], tasks: list[str], max_per_task: int | None) -> list[dict]:
    """Rows of `splits` and `tasks` (the held-out ones, or the training ones for the baseline's pool),
    in table order (a molecule's examples stay together), the first `max_per_task` of each task when
    capped."""
    table = read_instructions(instructions).select(EXAMPLE_COLUMNS)
    table = table.filter(pc.and_(pc.is_in(table.column("split"), value_set=pa.array(splits, type=pa.string())),
                                 pc.is_in(table.column("task"), value_set=pa.array(tasks, type=pa.string()))))
    rows, taken = [], dict.fromkeys(tasks, 0)
    for row in table.to_pylist():
        if max_per_task is None or taken[row["task"]] < max_per_task:
            taken[row["task"]] += 1
            rows.append(row)
    return rows


def left_padded(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), longest), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        ids[i, longest - len(prompt):] = torch.as_tensor(prompt)
        mask[i, longest - len(prompt):] = 1
    return ids, mask


def _geometry(rows: list[dict], levels: int) -> torch.Tensor:
    atoms = max([len(r["e3fp"]) for r in rows if r["e3fp"]] + [1])
    e3fp = torch.full((len(rows), atoms, levels), -1, dtype=torch.long)
    for i, row in enumerate(rows):
        if row["e3fp"]:
            e3fp[i, : len(row["e3fp"])] = torch.as_tensor(row["e3fp"])
    return e3fp


@torch.inference_mode()
def answer_examples(model_dir: Path, instructions: Path, rows: list[dict], *, batch_size: int,
                    max_new_tokens: dict[str, int], num_beams: int,
                    advance: Callable[[int], None] = lambda n: None) -> list[Prediction]:
    """One Prediction per row (id = example_id), in the rows' order. `max_new_tokens` is per task: a
    property answer is a sentence, a caption a paragraph."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a DeepMoLM checkpoint (no config.json)")
    model = DeepMoLMForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()
    tokenizer = load_tokenizer(model_dir)
    spec, levels = model.config.encoder_spec(), model.config.fusion_spec().e3fp_levels
    shards = instruction_shards(instructions)
    out: list[Prediction] = []
    for task in sorted({r["task"] for r in rows}):
        # one task per batch: its answers share a length budget
        of_task = [r for r in rows if r["task"] == task]
        for start in range(0, len(of_task), batch_size):
            batch = of_task[start:start + batch_size]
            ids, mask = left_padded([prompt_token_ids(r["prompt"], tokenizer, spec.tokens) for r in batch],
                                    tokenizer.pad_token_id)
            pixels = normalise_pixels(torch.stack([cached_pixels(str(shards / r["image_part"]), r["image_row"],
                                                                 spec.image_size) for r in batch]))
            new = model.generate_text(ids, mask, pixels, _geometry(batch, levels), max_new_tokens=max_new_tokens[task],
                                      num_beams=num_beams, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                                      pad_token_id=tokenizer.pad_token_id)
            for row, tokens in zip(batch, new):
                out.append(Prediction(id=row["example_id"], reference=row["response"],
                                      prediction=tokenizer.decode(tokens, skip_special_tokens=True).strip(),
                                      property=row["property"]))
            advance(len(batch))
    order = {r["example_id"]: i for i, r in enumerate(rows)}
    return sorted(out, key=lambda p: order[p.id])
