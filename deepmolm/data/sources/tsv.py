"""Reader for the ChEBI-20 layout: `CID<TAB>SMILES<TAB>description`, one header line.

Used for the published ChEBI-20 files and for any local file in that layout (`--source tsv`).
Lines are split on b"\\n" only and decoded one at a time, so a bad byte or an exotic Unicode line
separator costs one row (rejected with a reason), never the file.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from deepmolm.data.sources.errors import LayoutError
from deepmolm.data.sources.records import (
    RawRecord,
    Reason,
    Rejection,
    cid_problem,
    smiles_problem,
    unescape_published_smiles,
)

EXPECTED_HEADER = ("cid", "smiles", "description")


def _check_header(first_line: bytes, path: Path) -> None:
    try:
        text = first_line.decode("utf-8-sig").rstrip("\r")
    except UnicodeDecodeError:
        raise LayoutError(f"{path}: the header line is not UTF-8; is this a text file?") from None
    fields = tuple(f.strip().lower() for f in text.split("\t"))
    if fields != EXPECTED_HEADER:
        shown = text if len(text) <= 120 else text[:120] + "..."
        raise LayoutError(
            f"{path}: wrong layout: expected the header 'CID<TAB>SMILES<TAB>description', got {shown!r}"
        )


def check_layout(path: Path) -> None:
    """Raise LayoutError unless `path` is a file that starts with the expected header."""
    path = Path(path)
    if not path.is_file():
        raise LayoutError(f"{path}: no such file")
    with open(path, "rb") as handle:
        first = handle.readline()
    if not first.strip():
        raise LayoutError(f"{path}: empty file, or an empty header line")
    _check_header(first.rstrip(b"\n"), path)


def count_rows(path: Path) -> int:
    """Data rows in a layout file (lines after the header; a final newline adds none)."""
    lines, last = 0, b""
    with open(path, "rb") as handle:  # a MB at a time: a source file is never held whole
        for block in iter(lambda: handle.read(1 << 20), b""):
            lines, last = lines + block.count(b"\n"), block
    return max(lines + (0 if not last or last.endswith(b"\n") else 1) - 1, 0)


@dataclass(frozen=True)
class _FileContext:
    """What every row of one file shares: provenance and limits."""

    source: str
    split: str | None
    uri: str
    sha256: str
    max_smiles_chars: int
    max_description_chars: int


def read_layout(
    path: Path,
    *,
    source: str,
    split: str | None,
    uri: str,
    sha256: str,
    max_smiles_chars: int,
    max_description_chars: int,
) -> Iterator[RawRecord | Rejection]:
    """Yield one record or rejection per data line of `path`."""
    check_layout(path)
    context = _FileContext(source, split, uri, sha256, max_smiles_chars, max_description_chars)
    with open(path, "rb") as handle:
        handle.readline()
        for line_no, raw in enumerate(handle, start=2):
            yield _parse_line(raw.rstrip(b"\n"), line_no, context)


def _parse_line(raw: bytes, line_no: int, ctx: _FileContext) -> RawRecord | Rejection:
    def reject(reason: Reason, detail: str, raw_id: str = "", smiles: str | None = None) -> Rejection:
        return Rejection(ctx.source, ctx.split, raw_id or f"line {line_no}", smiles, line_no, reason, detail)

    raw = raw.rstrip(b"\r")
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return reject(Reason.BAD_ENCODING, f"not UTF-8 at byte {exc.start}")
    if not line.strip():
        return reject(Reason.EMPTY_LINE, "blank line")
    if "\x00" in line:
        return reject(Reason.MALFORMED_LINE, "line contains NUL characters")
    fields = line.split("\t")
    raw_id = fields[0].strip()[:64]
    if len(fields) < 3:
        return reject(Reason.MISSING_FIELD, f"{len(fields)} tab-separated field(s), expected 3", raw_id)
    if len(fields) > 3:
        return reject(Reason.MALFORMED_LINE, f"{len(fields)} tab-separated fields, expected 3", raw_id)
    cid_text, smiles_text, description = fields
    smiles = unescape_published_smiles(smiles_text.strip())
    if problem := cid_problem(cid_text):
        return reject(*problem, raw_id, smiles)
    if problem := smiles_problem(smiles, ctx.max_smiles_chars):
        return reject(*problem, raw_id, smiles)
    description = description.strip()
    if not description:
        return reject(Reason.EMPTY_DESCRIPTION, "empty description", raw_id, smiles)
    if len(description) > ctx.max_description_chars:
        detail = f"description of {len(description)} characters (limit {ctx.max_description_chars})"
        return reject(Reason.FIELD_TOO_LONG, detail, raw_id, smiles)
    return RawRecord(
        cid=int(cid_text),
        smiles=smiles,
        source=ctx.source,
        source_uri=ctx.uri,
        description=description,
        split=ctx.split,
        source_sha256=ctx.sha256,
        source_line=line_no,
    )
