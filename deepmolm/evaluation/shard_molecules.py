"""Molecules with their descriptions, read from a shard version for the retrieval baseline."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from deepmolm.data.shards.parts import iter_shard_parts, resolve_version
from deepmolm.evaluation.baseline import Molecule


def read_molecules(path: Path, split: str | None = None, *, cids: set[int] | None = None,
                   e3fp: bool = True) -> list[Molecule]:
    """Rows of `split` (all when None; only `cids` when given) that have a description."""
    return [m for part in read_molecule_parts(path, split, cids=cids, e3fp=e3fp) for m in part]


def read_molecule_parts(path: Path, split: str | None = None, *, cids: set[int] | None = None,
                        e3fp: bool = True) -> Iterator[list[Molecule]]:
    """read_molecules one shard part at a time (without their E3FP when `e3fp` is false): what a
    reader holds is a part's molecules, not the version's."""
    columns = ["cid", "split", "smiles", "description", "properties", *(["e3fp"] if e3fp else [])]
    for part in iter_shard_parts(resolve_version(Path(path)), columns=columns):
        yield [Molecule(cid=r["cid"], smiles=r["smiles"], description=r["description"], e3fp=r.get("e3fp"),
                        properties=r["properties"])
               for r in part.to_pylist()
               if ((split is None or r["split"] == split) and (cids is None or r["cid"] in cids)
                   and (r["description"] or "").strip())]
