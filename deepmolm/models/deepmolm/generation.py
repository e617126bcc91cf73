"""Answers from a checkpoint: loading it, batched greedy generation, and the length bounds of each task.

One path for every caller (the evaluate stage, `deepmolm predict`, the web page), so an answer on the
page is the answer the metrics scored.
"""

from __future__ import annotations

from pathlib import Path

import torch

from deepmolm.config import Params
from deepmolm.models.deepmolm.configuration import DeepMoLMConfig
from deepmolm.models.deepmolm.modeling import DeepMoLMForCausalLM
from deepmolm.models.deepmolm.processing import normalise_pixels, prompt_token_ids
from deepmolm.models.deepmolm.tokenizer import load_tokenizer


def checkpoint_image_size(checkpoint: Path) -> int:
    """The drawing size a checkpoint reads, from its config alone."""
    return DeepMoLMConfig.from_pretrained(_checked(checkpoint), local_files_only=True).encoder_spec().image_size


def load_checkpoint(checkpoint: Path) -> tuple[DeepMoLMForCausalLM, object]:
    """The model (in eval mode) and tokenizer of a checkpoint directory, read locally only."""
    checkpoint = _checked(checkpoint)
    return DeepMoLMForCausalLM.from_pretrained(checkpoint, local_files_only=True).eval(), load_tokenizer(checkpoint)


def _checked(checkpoint: Path) -> Path:
    checkpoint = Path(checkpoint)
    if not (checkpoint / "config.json").is_file():
        raise FileNotFoundError(f"{checkpoint} is not a DeepMoLM checkpoint (no config.json)")
    return checkpoint


def left_padded(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask, padded on the left so every answer starts right after its prompt."""
    longest = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), longest), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        ids[i, longest - len(prompt):] = torch.as_tensor(prompt)
        mask[i, longest - len(prompt):] = 1
    return ids, mask


@torch.inference_mode()
def generate_answers(model: DeepMoLMForCausalLM, tokenizer, prompts: list[str], pixels: torch.Tensor,
                     geometry: torch.Tensor, *, max_new_tokens: int, min_new_tokens: int = 0, num_beams: int = 1,
                     repetition_penalty: float = 1.0, no_repeat_ngram_size: int = 0) -> list[str]:
    """Answers to a batch of prompts: uint8 drawings [B, 3, S, S] and E3FP [B, atoms, levels] (-1 = none);
    no answer ends before `min_new_tokens`."""
    ids, mask = left_padded([prompt_token_ids(p, tokenizer, model.config.encoder_spec().tokens) for p in prompts],
                            tokenizer.pad_token_id)
    new = model.generate_text(ids, mask, normalise_pixels(pixels), geometry, max_new_tokens=max_new_tokens,
                              min_new_tokens=min_new_tokens, num_beams=num_beams, repetition_penalty=repetition_penalty,
                              no_repeat_ngram_size=no_repeat_ngram_size, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id)
    return [tokenizer.decode(tokens, skip_special_tokens=True).strip() for tokens in new]


def answer_lengths(params: Params, task: str) -> dict[str, int]:
    """`generate`'s length bounds for a task's answers: a caption is a paragraph (at least
    model.generation.min_new_tokens long), a property answer one sentence."""
    generation = params.model.generation
    if task == "caption":
        return {"max_new_tokens": generation.max_new_tokens, "min_new_tokens": generation.min_new_tokens}
    if task == "property_qa":
        return {"max_new_tokens": params.eval.property_max_new_tokens, "min_new_tokens": 0}
    raise ValueError(f"unknown task {task!r} (caption | property_qa)")
