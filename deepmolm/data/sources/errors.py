"""Errors that make a whole input unusable (as opposed to one bad row, which becomes a rejection)."""

from __future__ import annotations


class RequestError(ValueError):
    """A source asked for with options it does not take, or without the ones it needs (usage, exit 2)."""


class SourceError(Exception):
    """An input that cannot be used at all; the CLI prints the message and exits non-zero."""


class LayoutError(SourceError):
    """A file that is missing, empty, or not in the expected layout."""


class ChecksumError(SourceError):
    """A file whose SHA-256 is not the one it must have."""


class BatchFetchError(SourceError):
    """A batch that still failed after every retry; nothing of it was written."""

    def __init__(self, cids: list[int], cause: BaseException):
        self.cids = list(cids)
        self.cause = cause
        shown = ", ".join(map(str, self.cids[:20])) + (" ..." if len(self.cids) > 20 else "")
        super().__init__(f"PubChem batch of {len(self.cids)} CIDs failed after retries ({cause}); CIDs: {shown}")
