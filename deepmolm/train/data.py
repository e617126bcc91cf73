"""Instruction examples -> model tensors, for a torch DataLoader or Ray Data's map_batches.

A row refers to its drawing by shard part and row; the PNG is decoded and resized to the preset's
image size, and stays uint8 until `model_inputs` moves the batch to its device and normalises it
with CLIP's mean and std there. The prompt goes through the chat template and
its single <image> becomes one placeholder token per visual token; labels are -100 on the prompt
and image positions and the response ids after them. A batch pads token sequences on the right
(pad id, label -100, attention 0) and E3FP arrays to the batch's largest molecule with -1, the
projector's padding value.
"""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

from deepmolm.instructions import instruction_shards, read_instructions
from deepmolm.model.prompt import IMAGE, format_prompt, format_response

IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's, which the DeepEncoder's towers were trained with
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
IGNORE = -100


def image_pixels(png: bytes, size: int) -> torch.Tensor:
    """PNG bytes -> [3, size, size] uint8. Kept as bytes until the batch is on its device: a float
    copy is 4x larger to pass between loader processes (12 MB per 1024-px image)."""
    with Image.open(io.BytesIO(png)) as image:
        image = image.convert("RGB")
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=2.0)
        return torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()  # np.array: a writable copy


def normalise_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [..., 3, S, S] -> float32 normalised with CLIP's mean and std, on the tensor's device."""
    scale = (1.0 / (255.0 * torch.tensor(IMAGE_STD, device=pixels.device))).view(3, 1, 1)
    shift = (torch.tensor(IMAGE_MEAN, device=pixels.device) / torch.tensor(IMAGE_STD, device=pixels.device)).view(3, 1, 1)
    return pixels.float().mul_(scale).sub_(shift)


def prompt_token_ids(prompt: str, tokenizer, image_tokens: int) -> list[int]:
    """The templated prompt with its <image> expanded to one placeholder per visual token."""
    before, after = format_prompt(prompt).split(IMAGE)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE)
    return (tokenizer(before, add_special_tokens=False)["input_ids"] + [image_id] * image_tokens
            + tokenizer(after, add_special_tokens=False)["input_ids"])


def encode_example(prompt: str, response: str, tokenizer, image_tokens: int, max_length: int) -> dict[str, list[int]]:
    """Token ids and labels of one example; the response is cut (never the prompt) to fit max_length."""
    prompt_ids = prompt_token_ids(prompt, tokenizer, image_tokens)
    response_ids = tokenizer(format_response(response), add_special_tokens=False)["input_ids"]
    room = max_length - len(prompt_ids)
    if room < 1:
        raise ValueError(f"the prompt alone is {len(prompt_ids)} tokens, over max_length {max_length}")
    response_ids = response_ids[:room]
    return {"input_ids": prompt_ids + response_ids, "labels": [IGNORE] * len(prompt_ids) + response_ids}


def collate(examples: list[dict], pad_id: int, e3fp_levels: int) -> dict[str, torch.Tensor]:
    longest = max(len(e["input_ids"]) for e in examples)
    atoms = max([len(e["e3fp"]) for e in examples if e["e3fp"] is not None] + [1])
    input_ids = torch.full((len(examples), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), longest), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(examples), longest), dtype=torch.long)
    e3fp = torch.full((len(examples), atoms, e3fp_levels), -1, dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        input_ids[i, :n] = torch.as_tensor(e["input_ids"])
        labels[i, :n] = torch.as_tensor(e["labels"])
        attention[i, :n] = 1
        if e["e3fp"]:
            e3fp[i, : len(e["e3fp"])] = torch.as_tensor(e["e3fp"])
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels,
            "pixels": torch.stack([e["pixels"] for e in examples]), "e3fp": e3fp}


def model_inputs(batch: dict[str, torch.Tensor], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """A collated batch on `device`, its pixels normalised there: what the model's forward takes."""
    moved = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
    moved["pixel_values"] = normalise_pixels(moved.pop("pixels"))
    return moved


class InstructionDataset(torch.utils.data.Dataset):
    """An instruction set directory (examples.parquet + manifest) with its shard version's images."""

    def __init__(self, directory: Path, tokenizer, *, image_size: int, image_tokens: int, max_length: int):
        self.directory = Path(directory)
        self.shards = instruction_shards(self.directory)
        self.rows = read_instructions(self.directory).select(
            ["prompt", "response", "image_part", "image_row", "e3fp"]).to_pylist()
        self.tokenizer, self.image_size, self.image_tokens, self.max_length = tokenizer, image_size, image_tokens, max_length

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index]
        return {**encode_example(row["prompt"], row["response"], self.tokenizer, self.image_tokens, self.max_length),
                "pixels": cached_pixels(str(self.shards / row["image_part"]), row["image_row"], self.image_size),
                "e3fp": row["e3fp"]}


@lru_cache(maxsize=64)
def cached_pixels(part: str, row: int, size: int) -> torch.Tensor:
    """A molecule's decoded drawing: its examples (a caption and each property question) are
    neighbours in the table, so one decode serves them all when rows are read in order."""
    return image_pixels(_part_images(part)[row], size)


@lru_cache(maxsize=8)
def _part_images(path: str) -> list[bytes]:
    """The PNGs of one shard part (a few MB), kept while consecutive rows use them."""
    return pq.read_table(path, columns=["image_png"]).column("image_png").to_pylist()
