"""MedianDigits: a number's digits at the running median of the model's distribution, not its mode."""

from __future__ import annotations

import math

import pytest
import torch

from deepmolm.models.deepmolm.generation import MedianDigits

DIGITS = list(range(20, 30))  # token ids of "0".."9"
POINT, SPACE = 18, 5


class DigitTokenizer:
    def convert_tokens_to_ids(self, token: str) -> int:
        return {".": POINT, **{str(d): DIGITS[d] for d in range(10)}}[token]


def step_scores(digit_probs: dict[int, float], rest: dict[int, float] | None = None) -> torch.Tensor:
    """Log-probabilities over a 32-token vocabulary: the given digits (and other tokens)."""
    probs = torch.full((32,), 1e-9)
    for digit, p in digit_probs.items():
        probs[DIGITS[digit]] = p
    for token, p in (rest or {}).items():
        probs[token] = p
    return probs.log()[None]


def chosen(processor: MedianDigits, generated: list[int], scores: torch.Tensor) -> int:
    return int(processor(torch.tensor([generated]), scores.clone()).argmax())


def test_the_digit_after_the_first_is_the_median_not_the_mode_and_the_quantile_carries_on():
    processor = MedianDigits(DigitTokenizer())
    # "1" then: 0 is the likeliest hundreds digit (0.4), but 0.6 of the mass is on 1, 2 and 3
    assert chosen(processor, [SPACE, DIGITS[1]], step_scores({0: 0.4, 1: 0.2, 2: 0.2, 3: 0.2})) == DIGITS[1]
    assert math.isclose(float(processor.quantile[0]), 0.5, abs_tol=1e-6), "(0.5 - 0.4) / 0.2: the median is mid-way into digit 1"
    uniform = step_scores(dict.fromkeys(range(10), 0.1))
    assert chosen(processor, [SPACE, DIGITS[1], DIGITS[1]], uniform) == DIGITS[4], "then the middle of uniform tens"
    # a decimal point inside the number keeps the quantile; past the number it is reset
    processor.quantile[0] = 0.95
    assert chosen(processor, [DIGITS[1], DIGITS[1], DIGITS[4], POINT], uniform) == DIGITS[9]
    assert chosen(processor, [DIGITS[4], POINT, SPACE], uniform) == int(uniform.argmax()), "not inside a number"
    assert float(processor.quantile[0]) == 0.5


def test_greedy_keeps_the_first_digit_and_where_the_number_ends():
    processor = MedianDigits(DigitTokenizer())
    first = step_scores({1: 0.4, 8: 0.3, 9: 0.3})  # the digits' median would be 8
    assert chosen(processor, [SPACE], first) == DIGITS[1], "the first digit stays greedy"
    ends = step_scores({0: 0.3, 1: 0.1}, {POINT: 0.6})
    assert chosen(processor, [SPACE, DIGITS[5]], ends) == POINT, "the number ends where greedy ends it"
    assert chosen(processor, [], step_scores({3: 0.9})) == DIGITS[3], "nothing generated yet: untouched"


@pytest.mark.parametrize("per_view", [False, True])
def test_a_slot_is_filled_from_the_state_that_wrote_it_whatever_the_left_padding(per_view):
    """Split per view, the second molecule (no E3FP) is answered by the drawing's head."""
    from deepmolm.models.deepmolm.generation import left_padded, slot_values
    from deepmolm.models.deepmolm.modeling import has_geometry
    from tests.models.deepmolm.test_molm import IMAGE_TOKEN, NUMBER_TOKEN, tiny

    model = tiny(per_view=per_view).eval()
    if per_view:
        with torch.no_grad():
            model.number_head_drawing[-1].bias.add_(1.0)  # the two heads answer apart
    prompts = [[1, *[IMAGE_TOKEN] * 4, 40, 41, 42], [1, *[IMAGE_TOKEN] * 4, 43, 44, 45, 46, 47]]
    ids, mask = left_padded(prompts, pad_id=0)
    new = torch.tensor([[12, NUMBER_TOKEN, 13, 2], [NUMBER_TOKEN, 14, NUMBER_TOKEN, 2]])
    g = torch.Generator().manual_seed(0)
    pixels, geometry = torch.randn(2, 3, 64, 64, generator=g), torch.randint(0, 4096, (2, 5, 4), generator=g)
    geometry[1] = -1  # no conformer
    values = slot_values(model, ids, mask, pixels, geometry, new)
    assert [len(v) for v in values] == [1, 2]
    for row, slots in ((0, [1]), (1, [0, 2])):  # each answer alone, unpadded: the same values
        for value, slot in zip(values[row], slots):
            alone = torch.tensor([prompts[row] + new[row, :slot].tolist()])
            with torch.no_grad():
                hidden = model(alone, torch.ones_like(alone), pixels[row:row + 1], geometry[row:row + 1],
                               output_hidden_states=True).hidden_states[-1][0, -1]
                pooled = model.pooled_visual(model.visual_tokens(pixels[row:row + 1], geometry[row:row + 1]), 1)
                alone_value = float(model.numbers_at(hidden[None], pooled, has_geometry(geometry[row:row + 1], 1))[0])
                with_e3fp_head = float(model.numbers_at(hidden[None], pooled, torch.ones(1, dtype=torch.bool))[0])
            assert (per_view and row == 1) != math.isclose(alone_value, with_e3fp_head), "which head answered"
            assert math.isclose(value, alone_value, rel_tol=1e-4, abs_tol=1e-5)
    plain = tiny(number_head=False).eval()
    assert slot_values(plain, ids, mask, pixels, geometry, new) == [[], []], "no head: nothing to fill"


def test_an_answer_is_written_with_its_slots_filled(tokenizer):
    from deepmolm.models.deepmolm.generation import written
    from deepmolm.models.deepmolm.processing import NUMBER
    from deepmolm.models.deepmolm.tokenizer import number_token_id

    slot = number_token_id(tokenizer)
    tokens = tokenizer(f"It is approximately {NUMBER} g/mol.", add_special_tokens=False)["input_ids"]
    assert tokens.count(slot) == 1
    assert written(tokenizer, tokens + [tokenizer.eos_token_id], [356.456], slot) == "It is approximately 356.46 g/mol."
    assert written(tokenizer, tokens, [], slot) == "It is approximately  g/mol.", "an unfilled slot writes nothing"
