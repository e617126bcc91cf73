"""What a source yields for each input row: a raw record or a rejection with a reason code.

Every input row ends up as exactly one of the two, so `accepted + rejected == input rows` can be
checked at the end of every ingest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from enum import StrEnum

from rdkit import Chem, rdBase


class Reason(StrEnum):
    """Reject reason codes, stable strings used in rejects.parquet, manifests and contracts."""

    EMPTY_LINE = "empty_line"
    BAD_ENCODING = "bad_encoding"
    MALFORMED_LINE = "malformed_line"
    MISSING_FIELD = "missing_field"
    NON_NUMERIC_CID = "non_numeric_cid"
    NEGATIVE_CID = "negative_cid"
    CID_OUT_OF_RANGE = "cid_out_of_range"
    DUPLICATE_CID = "duplicate_cid"
    EMPTY_SMILES = "empty_smiles"
    UNPARSEABLE_SMILES = "unparseable_smiles"
    EMPTY_DESCRIPTION = "empty_description"
    FIELD_TOO_LONG = "field_too_long"
    NOT_FOUND = "not_found"
    BAD_REQUEST = "bad_request"
    FETCH_FAILED = "fetch_failed"
    BENCHMARK_MOLECULE = "benchmark_molecule"  # a molecule of an evaluated property set, kept out of pretraining
    DUPLICATE_MOLECULE = "duplicate_molecule"  # an InChIKey an earlier row of the same corpus has


@dataclass(frozen=True)
class Rejection:
    source: str
    split: str | None
    raw_id: str
    raw_smiles: str | None
    source_line: int | None
    reason: Reason
    detail: str
    stage: str = "ingest"


@dataclass(frozen=True)
class PubChemProperties:
    mw: float | None = None
    exact_mass: float | None = None
    xlogp: float | None = None
    tpsa: float | None = None
    complexity: float | None = None
    hbd: int | None = None
    hba: int | None = None


@dataclass(frozen=True)
class RawRecord:
    cid: int
    smiles: str
    source: str
    source_uri: str
    description: str | None = None
    split: str | None = None
    source_sha256: str | None = None
    source_line: int | None = None
    inchikey: str | None = None
    description_source: str | None = None
    pubchem: PubChemProperties | None = None
    coords: list[list[float]] | None = None
    coords_status: str | None = None
    conformer_sdf: str | None = None

    def as_row(self) -> dict:
        # Shallow on purpose: dataclasses.asdict deep-copies every coordinate list (half the ingest time).
        row = {name: getattr(self, name) for name in _RAW_RECORD_FIELDS}
        if self.pubchem is not None:
            row["pubchem"] = self.pubchem.__dict__.copy()
        return row


_RAW_RECORD_FIELDS = tuple(f.name for f in fields(RawRecord))


@dataclass(frozen=True)
class InputRef:
    """One input a snapshot was made from (a file or a fetched URL), for the manifest."""

    uri: str
    sha256: str
    split: str | None = None
    rows: int | None = None
    extra: dict = field(default_factory=dict)


MAX_CID = 2**63 - 1
_WHITESPACE = re.compile(r"\s")


def cid_problem(text: str) -> tuple[Reason, str] | None:
    """Why a CID field is unusable, or None when it is a positive integer."""
    token = text.strip()
    if not token:
        return Reason.MISSING_FIELD, "empty CID field"
    digits = token[1:] if token[0] in "+-" else token
    if not (digits.isascii() and digits.isdigit()):
        return Reason.NON_NUMERIC_CID, f"CID {token[:40]!r} is not an integer"
    value = int(token)
    if value < 0:
        return Reason.NEGATIVE_CID, f"CID {value} is negative"
    if value == 0 or value > MAX_CID:
        return Reason.CID_OUT_OF_RANGE, f"CID {token[:40]} is outside 1..2^63-1"
    return None


def smiles_problem(smiles: str, max_chars: int) -> tuple[Reason, str] | None:
    """Why a SMILES is unusable at ingest: empty, too long, or not SMILES syntax.

    Only syntax is checked here (no sanitization): whether the chemistry is acceptable is the
    featurizer's decision, with its own reason codes.
    """
    if not smiles:
        return Reason.EMPTY_SMILES, "empty SMILES"
    if len(smiles) > max_chars:
        return Reason.FIELD_TOO_LONG, f"SMILES of {len(smiles)} characters (limit {max_chars})"
    if not smiles.isascii() or _WHITESPACE.search(smiles):
        return Reason.UNPARSEABLE_SMILES, "SMILES contains whitespace or non-ASCII characters"
    with rdBase.BlockLogs():
        mol = Chem.MolFromSmiles(smiles, sanitize=False)
    if mol is None or mol.GetNumAtoms() == 0:
        return Reason.UNPARSEABLE_SMILES, "RDKit cannot parse the SMILES syntax"
    return None


def inchikey(smiles: str) -> str | None:
    """The standard InChIKey, or None where RDKit cannot sanitise the molecule (featurize rejects it then)."""
    with rdBase.BlockLogs():
        mol = Chem.MolFromSmiles(smiles)
        return (Chem.MolToInchiKey(mol) or None) if mol is not None else None


def unescape_published_smiles(smiles: str) -> str:
    r"""ChEBI-20 publishes SMILES with doubled backslashes (`C\\C=C`); SMILES never has two in a row."""
    return smiles.replace("\\\\", "\\")
