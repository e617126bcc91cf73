"""The ingest checks of a row's fields, each with its reason code."""

from __future__ import annotations

import pytest

from deepmolm.data.sources.records import MAX_CID, Reason, cid_problem, smiles_problem, unescape_published_smiles


@pytest.mark.parametrize(("text", "reason"), [
    ("", Reason.MISSING_FIELD), ("  ", Reason.MISSING_FIELD), ("12a", Reason.NON_NUMERIC_CID),
    ("１２", Reason.NON_NUMERIC_CID), ("-5", Reason.NEGATIVE_CID), ("0", Reason.CID_OUT_OF_RANGE),
    (str(MAX_CID + 1), Reason.CID_OUT_OF_RANGE),
])
def test_unusable_cids_get_their_reason(text, reason):
    assert cid_problem(text)[0] == reason


def test_usable_cids_pass():
    assert cid_problem("2244") is None and cid_problem(" +7 ") is None and cid_problem(str(MAX_CID)) is None


@pytest.mark.parametrize(("smiles", "reason"), [
    ("", Reason.EMPTY_SMILES), ("C" * 11, Reason.FIELD_TOO_LONG), ("C C", Reason.UNPARSEABLE_SMILES),
    ("CÇ", Reason.UNPARSEABLE_SMILES), ("C1CC", Reason.UNPARSEABLE_SMILES), ("C(", Reason.UNPARSEABLE_SMILES),
])
def test_unusable_smiles_get_their_reason(smiles, reason):
    assert smiles_problem(smiles, max_chars=10)[0] == reason


def test_syntax_only_chemistry_is_the_featurizers_decision():
    assert smiles_problem("C(C)(C)(C)(C)C", max_chars=50) is None  # a pentavalent carbon parses unsanitized


def test_published_double_backslashes_are_undone():
    assert unescape_published_smiles("C\\\\C=C\\\\C") == "C\\C=C\\C"
    assert unescape_published_smiles("C/C=C/C") == "C/C=C/C"
