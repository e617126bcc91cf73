"""Molecules with their descriptions, read from a shard version for the retrieval baseline."""

from __future__ import annotations

from pathlib import Path

from deepmolm.data.shards.parts import read_shards, resolve_version
from deepmolm.evaluation.baseline import Molecule


def read_molecules(path: Path, split: str | None = None) -> list[Molecule]:
    """Rows of `split` (all when None) that have a description."""
    columns = ["cid", "split", "smiles", "description", "e3fp", "properties"]
    table = read_shards(resolve_version(Path(path)), columns=columns)
    return [Molecule(cid=r["cid"], smiles=r["smiles"], description=r["description"], e3fp=r["e3fp"],
                     properties=r["properties"])
            for r in table.to_pylist()
            if (split is None or r["split"] == split) and (r["description"] or "").strip()]
