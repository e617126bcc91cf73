"""Small raw tables for featurization tests: real ChEBI-20 rows plus rows RDKit must reject."""

from __future__ import annotations

from pathlib import Path

# Pass the ingest (the SMILES syntax is fine) and fail in featurization, each for its own reason.
BAD_ROWS = {
    99000001: ("c1cccc1", "kekulization_failed"),
    99000002: ("C(C)(C)(C)(C)C", "sanitization_failed"),
    99000003: ("*CC", "wildcard_atom"),
}


def small_chebi20_rows(shared: Path, count: int, *, skip: int = 0, max_smiles: int = 45) -> list[str]:
    """`count` ChEBI-20 test lines with short SMILES (fast conformers), after skipping `skip` of them."""
    lines = (shared / "chebi20" / "test.txt").read_text(encoding="utf-8").splitlines()[1:]
    small = [line for line in lines if len(line.split("\t")[1]) <= max_smiles]
    return small[skip : skip + count]


def write_table(path: Path, lines: list[str], *, bad: bool = True) -> Path:
    rows = list(lines)
    if bad:
        rows += [f"{cid}\t{smiles}\tA row featurization rejects ({reason})." for cid, (smiles, reason) in BAD_ROWS.items()]
    path.write_text("CID\tSMILES\tdescription\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path
