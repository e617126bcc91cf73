"""Answers from a checkpoint: loading it, batched generation, and how each task is decoded.

One path for every caller (the evaluate stage, `deepmolm predict`, the web page), so an answer on the
page is the answer the metrics scored.
"""

from __future__ import annotations

from pathlib import Path

import torch

from deepmolm.config import Params
from deepmolm.models.deepmolm.configuration import DeepMoLMConfig
from deepmolm.models.deepmolm.modeling import DeepMoLMForCausalLM
from deepmolm.models.deepmolm.numbers import first_number
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
                     repetition_penalty: float = 1.0, no_repeat_ngram_size: int = 0,
                     number_candidates: int = 1) -> list[str]:
    """Answers to a batch of prompts: uint8 drawings [B, 3, S, S] and E3FP [B, atoms, levels] (-1 = none);
    no answer ends before `min_new_tokens`. With `number_candidates` k > 1, each prompt's k most
    likely answers (beam search) and the one whose number is their probability-weighted median."""
    ids, mask = left_padded([prompt_token_ids(p, tokenizer, model.config.encoder_spec().tokens) for p in prompts],
                            tokenizer.pad_token_id)
    settings = dict(max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, repetition_penalty=repetition_penalty,
                    no_repeat_ngram_size=no_repeat_ngram_size, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id)
    pixels = normalise_pixels(pixels)
    if number_candidates == 1:
        new = model.generate_text(ids, mask, pixels, geometry, num_beams=num_beams, **settings)
        return _decoded(tokenizer, new)
    # length_penalty 0: a candidate's score is its log-probability, whatever its length
    out = model.generate_text(ids, mask, pixels, geometry, num_beams=max(num_beams, number_candidates),
                              num_return_sequences=number_candidates, length_penalty=0.0, output_scores=True,
                              return_dict_in_generate=True, **settings)
    texts, scores = _decoded(tokenizer, out.sequences), out.sequences_scores.view(len(prompts), number_candidates)
    return [median_answer(texts[i * number_candidates:(i + 1) * number_candidates], scores[i].tolist())
            for i in range(len(prompts))]


def _decoded(tokenizer, tokens: torch.Tensor) -> list[str]:
    return [tokenizer.decode(t, skip_special_tokens=True).strip() for t in tokens]


def median_answer(candidates: list[str], log_probs: list[float]) -> str:
    """The candidate whose number minimises the expected absolute error against the others' numbers,
    weighted by their probabilities (minimum Bayes risk under absolute error: the weighted median).
    Greedy decoding commits to the likeliest first digit even when the next one down is nearly as
    likely, an error of a whole place value; the median of the candidates hedges it. Candidates
    without a number are left out; with none at all, the likeliest candidate."""
    numbered = [(first_number(text), text, lp) for text, lp in zip(candidates, log_probs)]
    numbered = [(value, text, lp) for value, text, lp in numbered if value is not None]
    if not numbered:
        return candidates[max(range(len(candidates)), key=lambda i: log_probs[i])]
    weights = torch.softmax(torch.tensor([lp for _, _, lp in numbered], dtype=torch.float64), dim=0).tolist()
    risks = [sum(w * abs(value - other) for (other, _, _), w in zip(numbered, weights)) for value, _, _ in numbered]
    return numbered[min(range(len(numbered)), key=lambda i: (risks[i], -weights[i]))][1]


def task_decoding(params: Params, task: str) -> dict:
    """Everything `generate_answers` is told for a task's answers: model.generation's decoding, then
    what the task changes. A caption is a paragraph (at least min_new_tokens long); a property
    answer is one sentence (eval.property_max_new_tokens), with its own repetition penalty (a
    number's digits may repeat, and the caption's penalty pushes against that) and optionally
    chosen among number_candidates."""
    generation = params.model.generation
    decoding = generation.decoding()
    if task == "caption":
        return {**decoding, "max_new_tokens": generation.max_new_tokens, "min_new_tokens": generation.min_new_tokens}
    if task == "property_qa":
        return {**decoding, "max_new_tokens": params.eval.property_max_new_tokens, "min_new_tokens": 0,
                "repetition_penalty": generation.property_repetition_penalty,
                "number_candidates": generation.number_candidates}
    raise ValueError(f"unknown task {task!r} (caption | property_qa)")
