"""How a featurizer says no: an exception carrying a stable reason code, caught by record.py."""

from __future__ import annotations


class FeaturizeError(Exception):
    def __init__(self, reason: str, detail: str):
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}")


