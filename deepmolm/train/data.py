"""Instruction examples -> model tensors, and the order in which a worker sees them.

A row refers to its drawing by shard part and row; the PNG is decoded and shrunk to the preset's
image size (ink-preserving: see `image_pixels`), and stays uint8 until `model_inputs` moves the
batch to its device and normalises it with CLIP's mean and std there. The prompt goes through the
chat template and its single <image> becomes one placeholder token per visual token; labels are -100
on the prompt and image positions and the response ids (end token included) after them. An example
whose response does not fit `max_length` is not cut (a cut response teaches the model to stop
mid-sentence without its end token): `example_fits` says which to leave out, and the caller counts
them. A batch pads token sequences on the right (pad id, label -100, attention 0) and E3FP arrays to
the batch's largest molecule with -1, the projector's padding value.

`epoch_batches` is the order: a seeded permutation of every row per epoch, dealt to the workers,
so a molecule's examples are spread over the epoch and a resumed run sees exactly the batches an
uninterrupted one would.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image, ImageFilter

from deepmolm.instructions import instruction_shards, read_instructions
from deepmolm.model.prompt import IMAGE, format_prompt, format_response

IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's, which the DeepEncoder's towers were trained with
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
IGNORE = -100


def image_pixels(png: bytes, size: int) -> torch.Tensor:
    """PNG bytes -> [3, size, size] uint8 (a float copy would be 4x larger: 12 MB at 1024 px).

    Shrinking a 1024-px drawing with 2-px bonds by 8x averages its lines into faint grey; a
    minimum filter about as wide as the shrink factor first thickens the ink (dark on white), so
    bonds and atom labels survive as 1-px strokes, and a box filter then averages each block."""
    with Image.open(io.BytesIO(png)) as image:
        image = image.convert("RGB")
        if image.size != (size, size):
            factor = max(image.size) / size
            if factor >= 2:
                image = Image.fromarray(thicken_ink(np.asarray(image), 2 * int(factor // 2) + 1))
            image = image.resize((size, size), Image.Resampling.BOX if factor >= 2 else Image.Resampling.BICUBIC)
        return torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()  # np.array: a writable copy


def thicken_ink(pixels: np.ndarray, width: int) -> np.ndarray:
    """A `width` x `width` minimum filter on [H, W, C] uint8, as two running minima (rows, then
    columns): 20x faster than PIL's MinFilter, which would make decoding the training bottleneck."""
    r = width // 2
    padded = np.pad(pixels, ((r, r), (r, r), (0, 0)), constant_values=255)
    height, breadth = pixels.shape[:2]
    across = padded[:, :breadth].copy()
    for shift in range(1, width):
        np.minimum(across, padded[:, shift:shift + breadth], out=across)
    out = across[:height].copy()
    for shift in range(1, width):
        np.minimum(out, across[shift:shift + height], out=out)
    return out


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
    """Token ids and labels of one example, the response ending in the end token."""
    prompt_ids = prompt_token_ids(prompt, tokenizer, image_tokens)
    response_ids = tokenizer(format_response(response), add_special_tokens=False)["input_ids"]
    if len(prompt_ids) + len(response_ids) > max_length:
        raise ValueError(f"the example is {len(prompt_ids) + len(response_ids)} tokens, over max_length {max_length} "
                         f"(leave it out: see example_lengths)")
    return {"input_ids": prompt_ids + response_ids, "labels": [IGNORE] * len(prompt_ids) + response_ids}


def example_lengths(prompts: list[str], responses: list[str], tokenizer, image_tokens: int) -> list[tuple[int, int]]:
    """(whole example, response) token counts of each example, as encode_example would produce them
    (the response with its end token), from one batched tokenizer call per piece."""
    if not prompts:
        return []
    pieces = [format_prompt(p).split(IMAGE) for p in prompts]

    def lengths(texts: list[str]) -> list[int]:
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    total = zip(lengths([b for b, _ in pieces]), lengths([a for _, a in pieces]),
                lengths([format_response(r) for r in responses]))
    return [(before + image_tokens + after + response, response) for before, after, response in total]


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
    """Instruction rows (all of an instruction set directory's, or the given ones) with the drawings
    of its shard version."""

    def __init__(self, directory: Path, tokenizer, *, image_size: int, image_tokens: int, max_length: int,
                 rows: list[dict] | None = None):
        self.directory = Path(directory)
        self.shards = instruction_shards(self.directory)
        self.rows = rows if rows is not None else read_instructions(self.directory).select(
            ["prompt", "response", "image_part", "image_row", "e3fp"]).to_pylist()
        self.tokenizer, self.image_size, self.image_tokens, self.max_length = tokenizer, image_size, image_tokens, max_length

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index]
        return {**encode_example(row["prompt"], row["response"], self.tokenizer, self.image_tokens, self.max_length),
                "pixels": cached_pixels(str(self.shards / row["image_part"]), row["image_row"], self.image_size),
                "e3fp": row["e3fp"]}


class PixelCache:
    """Decoded drawings by (part, row, size), least recently used out first past `max_bytes`."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes = max_bytes, 0
        self.entries: OrderedDict[tuple[str, int, int], torch.Tensor] = OrderedDict()

    def get(self, part: str, row: int, size: int) -> torch.Tensor:
        key = (part, row, size)
        if key in self.entries:
            self.entries.move_to_end(key)
            return self.entries[key]
        pixels = self.entries[key] = image_pixels(_part_images(part)[row], size)
        self.bytes += pixels.numel()
        while len(self.entries) > 1 and self.bytes > self.max_bytes:
            self.bytes -= self.entries.popitem(last=False)[1].numel()
        return pixels


_PIXELS = PixelCache(1 << 30)


def cached_pixels(part: str, row: int, size: int) -> torch.Tensor:
    """A molecule's decoded drawing, kept per process (1 GiB): every epoch shows each molecule once
    per example, in a new order, and decoding and shrinking a 1024-px PNG costs far more than a step
    of a small model. At 128 px a whole ChEBI-20 split fits; at 1024 px about 340 drawings do."""
    return _PIXELS.get(part, row, size)


@lru_cache(maxsize=16)
def _part_images(path: str) -> list[bytes]:
    """The PNGs of one shard part (a few MB), kept while consecutive rows use them."""
    return pq.read_table(path, columns=["image_png"]).column("image_png").to_pylist()
