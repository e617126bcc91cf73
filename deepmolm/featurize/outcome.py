"""How a featurizer says no: an exception carrying a stable reason code, caught by record.py."""

from __future__ import annotations


class FeaturizeError(Exception):
    def __init__(self, reason: str, detail: str):
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}")


# Every reason code a featurizer rejects with (the contracts warn on any other).
REJECT_REASONS = (
    "empty_molecule",
    "featurizer_error",
    "inchi_failed",
    "kekulization_failed",
    "sanitization_failed",
    "unparseable_smiles",
    "wildcard_atom",
)
