"""Property QA: numbers read from messy answers, validity by range, MAE over valid answers."""

from __future__ import annotations

import json

import pytest

from deepmolm.config import load_params
from deepmolm.evaluation.predictions import Prediction
from deepmolm.evaluation.properties import first_number, score_properties
from tests.conftest import PARAMS, run_cli


@pytest.mark.parametrize(
    ("answer", "number"),
    [
        ("180.16 g/mol", 180.16),
        ("The molecular weight is approximately 1,234.5 Da.", 1234.5),
        ("LogP: -2.3", -2.3),
        ("logP is \u22120.7 (a Unicode minus)", -0.7),
        ("HOMO = -5.2e-1 eV", -0.52),
        ("about 1.2 x 10^-3", 0.0012),
        ("2.5 \u00d7 10^(3) units", 2500.0),
        ("TPSA is 63.6 \u00c5\u00b2, with 3 donors", 63.6),
        ("C3H8 has mass 44.1", 44.1),
        (".5", 0.5),
        ("I cannot tell.", None),
        ("", None),
    ],
)
def test_first_number(answer, number):
    got = first_number(answer)
    assert (got is None) if number is None else got == pytest.approx(number)


def test_scores_count_valid_unparseable_and_out_of_range_answers():
    ranges = load_params(PARAMS, []).eval.property_ranges
    predictions = [
        Prediction("1", "180.16", "The weight is 181.16 g/mol", "mw"),
        Prediction("2", "46.07", "46.07", "mw"),
        Prediction("3", "100", "no idea", "mw"),
        Prediction("4", "100", "-5 g/mol", "mw"),  # outside the plausible range
        Prediction("5", "-1.5", "LogP is -2.0", "logp"),
    ]
    scores = score_properties(predictions, ranges)
    mw, logp = scores["mw"], scores["logp"]
    assert (mw.n, mw.valid, mw.unparseable, mw.out_of_range) == (4, 2, 1, 1)
    assert mw.valid_ratio == 0.5 and mw.mae == pytest.approx(0.5)
    assert logp.as_dict() == {"n": 1, "valid": 1, "valid_ratio": 1.0, "unparseable": 0, "out_of_range": 0, "mae": 0.5}
    with pytest.raises(ValueError, match="'melting_point' is not one of"):
        score_properties([Prediction("6", "1", "1", "melting_point")], ranges)
    with pytest.raises(ValueError, match="holds no number"):
        score_properties([Prediction("7", "unknown", "1", "mw")], ranges)


def test_cli_properties_json(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"reference": "2.0", "prediction": "1.5 eV", "property": "gap"}) + "\n")
    result = run_cli("eval", "properties", "--predictions", str(path), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["gap"]["mae"] == 0.5
