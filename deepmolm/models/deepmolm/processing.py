"""What the model reads, in one place (training, evaluation, `deepmolm predict` and the web page use it):
the chat-style prompt template with its <image> expanded to one placeholder per visual token, and a
drawing's PNG shrunk to the preset's image size without losing its ink.

A property answer's number can be a slot: with a number head (modeling.py), the response's number
is replaced by one <num> token, which the LM learns to write, and the value is what the head learns to
regress there; generation fills the slot (generation.py).

A response is never cut at `max_length` (a cut response teaches the model to stop mid-sentence
without its end token): `encode_example` refuses it, and `example_lengths` lets the caller leave such
examples out and count them.
"""

from __future__ import annotations

import io
import re
from collections import OrderedDict
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

if TYPE_CHECKING:  # the tokenizer stage reads the template from here without loading the encoder's modules
    from deepmolm.models.deepmolm.deep_encoder import DeepEncoderSpec

IMAGE = "<image>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
END = "<|end|>"
PAD = "<|pad|>"
NUMBER = "<num>"
SPECIAL_TOKENS = (PAD, END, USER, ASSISTANT, IMAGE, NUMBER)
_VALUE = re.compile(r"-?\d+(?:\.\d+)?")


def format_prompt(instruction: str) -> str:
    """What the model reads before it answers; the one <image> is expanded to the visual tokens."""
    return f"{USER}\n{IMAGE}\n{instruction.strip()}\n{ASSISTANT}\n"


def format_response(response: str) -> str:
    return f"{response.strip()}{END}"


IGNORE = -100  # the label of a position the loss skips (prompt, image placeholders, padding)


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


def normalise_pixels(pixels: torch.Tensor, spec: DeepEncoderSpec) -> torch.Tensor:
    """uint8 [..., 3, S, S] -> float32 normalised with the encoder's mean and std (its weights'), on
    the tensor's device."""
    std = torch.tensor(spec.pixel_std, device=pixels.device)
    scale = (1.0 / (255.0 * std)).view(3, 1, 1)
    shift = (torch.tensor(spec.pixel_mean, device=pixels.device) / std).view(3, 1, 1)
    return pixels.float().mul_(scale).sub_(shift)


def e3fp_batch(fingerprints: list, levels: int) -> torch.Tensor:
    """[molecules, most heavy atoms, levels] E3FP identifiers, -1 (the Fusion Projector's padding)
    after a molecule's last atom and for a molecule without a conformer (None). At least one atom,
    so that a batch without any geometry keeps its shape."""
    arrays = [None if f is None or not len(f) else np.asarray(f, dtype=np.int64) for f in fingerprints]
    atoms = max([len(a) for a in arrays if a is not None] + [1])
    batch = torch.full((len(fingerprints), atoms, levels), -1, dtype=torch.long)
    for i, array in enumerate(arrays):
        if array is not None:
            batch[i, : len(array)] = torch.from_numpy(array)
    return batch


def prompt_token_ids(prompt: str, tokenizer, image_tokens: int) -> list[int]:
    """The templated prompt with its <image> expanded to one placeholder per visual token."""
    before, after = format_prompt(prompt).split(IMAGE)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE)
    return (tokenizer(before, add_special_tokens=False)["input_ids"] + [image_id] * image_tokens
            + tokenizer(after, add_special_tokens=False)["input_ids"])


def number_slot(response: str, value: float) -> str:
    """The response with the number that writes `value` replaced by the <num> slot."""
    match = _VALUE.search(response)
    if match is None or abs(float(match.group()) - value) > 1e-9 * max(1.0, abs(value)):
        raise ValueError(f"the response {response!r} does not write its answer value {value} first")
    return f"{response[:match.start()]}{NUMBER}{response[match.end():]}"


def encode_example(prompt: str, response: str, tokenizer, image_tokens: int, max_length: int,
                   number: float | None = None) -> dict:
    """Token ids and labels of one example, the response ending in the end token; with `number`
    (a property answer for a model with a number head), the response's number is a <num> slot and
    `number` is what the head is to write there."""
    if number is not None:
        response = number_slot(response, number)
    prompt_ids = prompt_token_ids(prompt, tokenizer, image_tokens)
    response_ids = tokenizer(format_response(response), add_special_tokens=False)["input_ids"]
    if len(prompt_ids) + len(response_ids) > max_length:
        raise ValueError(f"the example is {len(prompt_ids) + len(response_ids)} tokens, over max_length {max_length} "
                         f"(leave it out: see example_lengths)")
    return {"input_ids": prompt_ids + response_ids, "labels": [IGNORE] * len(prompt_ids) + response_ids,
            "number": number}


def example_lengths(prompts: list[str], responses: list[str], tokenizer, image_tokens: int) -> list[tuple[int, int]]:
    """(whole example, response) token counts of each example, as encode_example would produce them
    (the response with its end token; pass slotted responses for a number head), from one batched
    tokenizer call per piece."""
    if not prompts:
        return []
    pieces = [format_prompt(p).split(IMAGE) for p in prompts]

    def lengths(texts: list[str]) -> list[int]:
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    total = zip(lengths([b for b, _ in pieces]), lengths([a for _, a in pieces]),
                lengths([format_response(r) for r in responses]))
    return [(before + image_tokens + after + response, response) for before, after, response in total]


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
