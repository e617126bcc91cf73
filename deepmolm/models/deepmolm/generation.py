"""Answers from a checkpoint: loading it, batched generation, and how each task is decoded.

One path for every caller (the evaluate stage, `deepmolm predict`, the web page), so an answer on the
page is the answer the metrics scored.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from deepmolm.config import Params
from deepmolm.models.deepmolm.checkpoint import checked_checkpoint
from deepmolm.models.deepmolm.configuration import DeepMoLMConfig
from deepmolm.models.deepmolm.modeling import DeepMoLMForCausalLM, has_geometry
from deepmolm.models.deepmolm.processing import normalise_pixels, prompt_token_ids
from deepmolm.models.deepmolm.tokenizer import load_tokenizer


def checkpoint_image_size(checkpoint: Path) -> int:
    """The drawing size a checkpoint reads, from its config alone."""
    return DeepMoLMConfig.from_pretrained(checked_checkpoint(checkpoint), local_files_only=True).encoder_spec().image_size


def load_checkpoint(checkpoint: Path) -> tuple[DeepMoLMForCausalLM, object]:
    """The model (in eval mode) and tokenizer of a checkpoint directory, read locally only."""
    checkpoint = checked_checkpoint(checkpoint)
    return DeepMoLMForCausalLM.from_pretrained(checkpoint, local_files_only=True).eval(), load_tokenizer(checkpoint)


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
                     repetition_penalty: float = 1.0, no_repeat_ngram_size: int = 0,
                     number_digits: str = "likeliest") -> list[str]:
    """Answers to a batch of prompts: uint8 drawings [B, 3, S, S] and E3FP [B, atoms, levels] (-1 = none);
    no answer ends before `min_new_tokens`; `number_digits` "median": see MedianDigits."""
    ids, mask = left_padded([prompt_token_ids(p, tokenizer, model.config.encoder_spec().tokens) for p in prompts],
                            tokenizer.pad_token_id)
    processors = LogitsProcessorList([MedianDigits(tokenizer)] if number_digits == "median" else [])
    pixel_values = normalise_pixels(pixels, model.config.encoder_spec())
    visual = model.visual_tokens(pixel_values, geometry)  # once: the answers and their <num> slots read it
    new = model.generate_text(ids, mask, pixel_values, geometry, visual, max_new_tokens=max_new_tokens,
                              min_new_tokens=min_new_tokens, num_beams=num_beams, repetition_penalty=repetition_penalty,
                              no_repeat_ngram_size=no_repeat_ngram_size, do_sample=False, logits_processor=processors,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    values = slot_values(model, ids, mask, pixel_values, geometry, new, visual)
    return [written(tokenizer, tokens.tolist(), row_values, model.config.number_token_id)
            for tokens, row_values in zip(new, values)]


def slot_values(model: DeepMoLMForCausalLM, ids: torch.Tensor, mask: torch.Tensor, pixel_values: torch.Tensor,
                geometry: torch.Tensor, new: torch.Tensor, visual: torch.Tensor | None = None) -> list[list[float]]:
    """Per answer, the number head's value at each <num> it wrote: one forward pass over prompt and
    answer (positions counted from the attention mask, as generate counts them under left padding)
    reads the hidden state before each slot, beside the molecule's pooled visual tokens. Empty lists
    without a number head or a slot."""
    if not model.config.number_head or not bool((new == model.config.number_token_id).any()):
        return [[] for _ in new]
    sequence = torch.cat([ids, new], dim=1)
    full_mask = torch.cat([mask, torch.ones_like(new)], dim=1)
    positions = (full_mask.cumsum(-1) - 1).clamp(min=0)
    if visual is None:
        visual = model.visual_tokens(pixel_values, geometry)
    hidden = model.language_model(inputs_embeds=model.input_embeddings(sequence, pixel_values, geometry, visual),
                                  attention_mask=full_mask, position_ids=positions,
                                  output_hidden_states=True).hidden_states[-1]
    in_answer = torch.arange(1, sequence.shape[1], device=sequence.device) >= ids.shape[1]
    slots = (sequence[:, 1:] == model.config.number_token_id) & in_answer
    rows, columns = slots.nonzero(as_tuple=True)
    found = model.numbers_at(hidden[rows, columns], model.pooled_visual(visual, len(new))[rows],
                             has_geometry(geometry, len(new), new.device)[rows]).tolist()
    values: list[list[float]] = [[] for _ in new]
    for row, value in zip(rows.tolist(), found):
        values[row].append(value)
    return values


def written(tokenizer, tokens: list[int], values: list[float], number_token_id: int) -> str:
    """An answer's text, each <num> slot written as its value with two decimals."""
    pieces, start = [], 0
    for value in values:
        slot = tokens.index(number_token_id, start)
        pieces += [tokenizer.decode(tokens[start:slot], skip_special_tokens=True), f"{value:.2f}"]
        start = slot + 1
    pieces.append(tokenizer.decode(tokens[start:], skip_special_tokens=True))
    return "".join(pieces).strip()


class MedianDigits(LogitsProcessor):
    """Inside a number, the digit at the running median of the model's distribution over the number,
    not the likeliest digit. Digits are single tokens, so for numbers of one length their order is
    the numbers' order: at each digit the one where the cumulative probability crosses the target
    quantile q (0.5 after the number's first digit), and q rescaled to within that digit for the
    next one. The answer is then the median of what the model believes, the value that minimises
    the expected absolute error, where greedy decoding takes a leading digit of 0 over a 1, 2 and 3
    that together are likelier. The number's first digit and where it ends stay greedy."""

    def __init__(self, tokenizer):
        self.digits = torch.tensor([tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)])
        self.point = tokenizer.convert_tokens_to_ids(".")
        self.quantile: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.quantile is None:
            self.quantile = torch.full((len(scores),), 0.5, dtype=torch.float64)
        if input_ids.shape[1] == 0:
            return scores
        digits = self.digits.to(scores.device)
        last = input_ids[:, -1]
        after_digit = input_ids.shape[1] > 1 and torch.isin(input_ids[:, -2], digits)
        in_number = torch.isin(last, digits) | ((last == self.point) & after_digit)
        self.quantile[~in_number.cpu()] = 0.5
        continues = in_number & torch.isin(scores.argmax(dim=-1), digits)
        for row in continues.nonzero().flatten().tolist():
            p = torch.softmax(scores[row].double(), dim=-1)[digits]
            p = p / p.sum()
            below = torch.cumsum(p, dim=0) - p
            chosen = int(torch.searchsorted(torch.cumsum(p, dim=0), self.quantile[row]).clamp(max=9))
            self.quantile[row] = ((self.quantile[row] - below[chosen]) / p[chosen]).clamp(0.0, 1.0)
            scores[row] = float("-inf")
            scores[row, digits[chosen]] = 0.0
        return scores


def task_decoding(params: Params, task: str) -> dict:
    """Everything `generate_answers` is told for a task's answers: model.generation's decoding, then
    what the task changes. A caption is a paragraph (at least min_new_tokens long); a property
    answer is one sentence (eval.property_max_new_tokens) whose digits `number_digits` chooses."""
    generation = params.model.generation
    decoding = generation.decoding()
    if task == "caption":
        return {**decoding, "max_new_tokens": generation.max_new_tokens, "min_new_tokens": generation.min_new_tokens}
    if task == "property_qa":
        return {**decoding, "max_new_tokens": params.eval.property_max_new_tokens, "min_new_tokens": 0,
                "number_digits": generation.number_digits}
    raise ValueError(f"unknown task {task!r} (caption | property_qa)")
