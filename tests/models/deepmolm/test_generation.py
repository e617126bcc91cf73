"""Choosing a property answer among the beam's candidates (model.generation.number_candidates)."""

from __future__ import annotations

import math

from deepmolm.models.deepmolm.generation import median_answer


def answer(value: float) -> str:
    return f"The molecular weight is {value} g/mol."


def test_the_answer_is_the_weighted_median_not_the_likeliest_candidate():
    # 500 is the likeliest single answer (0.40), but 0.55 of the probability says about 400
    candidates = [answer(500.1), answer(400.0), answer(410.0), "It is heavy.", answer(900.0)]
    log_probs = [math.log(p) for p in (0.40, 0.30, 0.25, 0.04, 0.01)]
    assert median_answer(candidates, log_probs) == answer(410.0)
    # the same candidates, now most of the probability on 500
    log_probs = [math.log(p) for p in (0.70, 0.10, 0.10, 0.05, 0.05)]
    assert median_answer(candidates, log_probs) == answer(500.1)


def test_candidates_without_a_number_are_left_out_unless_none_has_one():
    assert median_answer(["It is heavy.", answer(12.0)], [-0.1, -3.0]) == answer(12.0)
    assert median_answer(["It is heavy.", "It is light."], [-2.0, -0.5]) == "It is light."


def test_an_even_split_goes_to_the_likelier_side():
    assert median_answer([answer(100.0), answer(200.0)], [math.log(0.5), math.log(0.5)]) in (answer(100.0), answer(200.0))
    assert median_answer([answer(100.0), answer(200.0)], [math.log(0.49), math.log(0.51)]) == answer(200.0)
