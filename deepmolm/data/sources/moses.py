"""MOSES's training set: unlabelled drug-like molecules, one SMILES a line under the header `SMILES`
(gzip or plain), the pretraining corpus of MuMo.

MOSES has no identifiers of its own, so a record's `cid` is its data row number in the file (1 for
the first molecule), which with the file's SHA-256 names the molecule as a PubChem CID would. Rows
are read one at a time from the stream, never the whole file: `max_rows` takes the first rows only,
and every row read is accounted for. Molecules of the property sets a model is evaluated on are
rejected by InChIKey (`benchmark_molecule`), as is a second row of one InChIKey (`duplicate_molecule`).
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from deepmolm.data.sources.errors import ChecksumError, LayoutError
from deepmolm.data.sources.records import RawRecord, Reason, Rejection, inchikey, smiles_problem
from deepmolm.store.files import sha256_file

SOURCE = "moses"
SPLIT = None  # unlabelled: no split a caption or a property is evaluated on
HEADER = "SMILES"


@dataclass(frozen=True)
class MosesFile:
    path: Path
    uri: str
    sha256: str


def _open(path: Path):
    with open(path, "rb") as handle:
        gzipped = handle.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def locate(path: Path, url: str, expected_sha256: str | None) -> MosesFile:
    """The file with its SHA-256, refused when missing, not in the layout, or not the known bytes.
    Its rows name `url`, where the bytes are published, not where this machine keeps them, so two
    copies of the project at different places write the same raw table."""
    path = Path(path)
    if not path.is_file():
        raise LayoutError(f"{path}: no such file (sources.moses.file)")
    try:
        with _open(path) as handle:
            first = handle.readline().decode("utf-8-sig").strip()
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise LayoutError(f"{path}: not a readable SMILES list ({exc})") from None
    if first != HEADER:
        raise LayoutError(f"{path}: wrong layout: expected the header line 'SMILES', got {first[:80]!r}")
    digest = sha256_file(path)
    if expected_sha256 is not None and digest != expected_sha256:
        raise ChecksumError(f"{path}: SHA-256 {digest} is not the known sum of MOSES's train.csv.gz "
                            f"({expected_sha256}, sources.moses.sha256): the file is damaged or another one")
    return MosesFile(path, url, digest)


def read_rows(source: MosesFile, *, max_rows: int | None, max_smiles_chars: int,
              excluded: dict[str, str]) -> Iterator[RawRecord | Rejection]:
    """One record or rejection per data row, the first `max_rows` rows (all when None).

    `excluded` maps the InChIKeys to leave out to where they come from (e.g. "esol molecule 12")."""
    seen: dict[str, int] = {}
    with _open(source.path) as handle:
        handle.readline()
        for row, raw in enumerate(handle, start=1):
            if max_rows is not None and row > max_rows:
                return
            yield _row(raw, row, source, max_smiles_chars, excluded, seen)


def _row(raw: bytes, row: int, source: MosesFile, max_smiles_chars: int, excluded: dict[str, str],
         seen: dict[str, int]) -> RawRecord | Rejection:
    line = row + 1  # the header is line 1

    def reject(reason: Reason, detail: str, smiles: str | None = None) -> Rejection:
        return Rejection(SOURCE, SPLIT, f"row {row}", smiles, line, reason, detail)

    try:
        smiles = raw.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        return reject(Reason.BAD_ENCODING, f"not UTF-8 at byte {exc.start}")
    if not smiles:
        return reject(Reason.EMPTY_LINE, "blank line")
    if problem := smiles_problem(smiles, max_smiles_chars):
        return reject(*problem, smiles)
    key = inchikey(smiles)
    if key is not None:
        if key in excluded:
            return reject(Reason.BENCHMARK_MOLECULE, f"InChIKey {key} is {excluded[key]}: evaluated, so never pretrained on",
                          smiles)
        if key in seen:
            return reject(Reason.DUPLICATE_MOLECULE, f"InChIKey {key} already taken from row {seen[key]}", smiles)
        seen[key] = row
    return RawRecord(cid=row, smiles=smiles, source=SOURCE, source_uri=source.uri, split=SPLIT,
                     source_sha256=source.sha256, source_line=line, inchikey=key)
