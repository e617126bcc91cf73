"""Molecules with their descriptions, read from a shard version for the retrieval baseline."""

from __future__ import annotations

from pathlib import Path

from deepmolm.data.shards.parts import iter_shard_parts, resolve_version
from deepmolm.evaluation.baseline import Molecule


def read_molecules(path: Path, split: str | None = None, *, cids: set[int] | None = None,
                   e3fp: bool = True) -> list[Molecule]:
    """Rows of `split` (all when None; only `cids` when given) that have a description, one part at
    a time, so what is held is the molecules kept (without their E3FP when `e3fp` is false), not the
    version."""
    columns = ["cid", "split", "smiles", "description", "properties", *(["e3fp"] if e3fp else [])]
    kept = []
    for part in iter_shard_parts(resolve_version(Path(path)), columns=columns):
        for r in part.to_pylist():
            if ((split is None or r["split"] == split) and (cids is None or r["cid"] in cids)
                    and (r["description"] or "").strip()):
                kept.append(Molecule(cid=r["cid"], smiles=r["smiles"], description=r["description"],
                                     e3fp=r.get("e3fp"), properties=r["properties"]))
    return kept
