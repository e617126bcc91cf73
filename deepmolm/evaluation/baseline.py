"""Retrieval baseline: each test molecule gets the description of its most similar pool molecule.

Similarity is Tanimoto on RDKit Morgan fingerprints of the canonical SMILES, or on the molecule's
E3FP identifiers (the set of all atoms' identifiers at every level, as a sparse fingerprint) when
params say `e3fp`. Ties go to the pool molecule that comes first (by CID), so the output is
deterministic; a query never retrieves its own CID. The output is a prediction file the caption
metrics read. `RetrievalIndex` fingerprints the pool once, for the evaluate stage and for the
server, which asks it one molecule at a time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from rdkit import Chem, DataStructs, rdBase
from rdkit.Chem import rdFingerprintGenerator

from deepmolm.evaluation.predictions import Prediction


@dataclass(frozen=True)
class Molecule:
    cid: int
    smiles: str
    description: str
    e3fp: list | None = None
    properties: dict | None = None  # the shard's RDKit properties, for a retrieved property answer


def fingerprints(molecules: list[Molecule], kind: str, radius: int, bits: int) -> list:
    if kind == "morgan":
        generator = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=bits)
        with rdBase.BlockLogs():
            return [generator.GetFingerprint(Chem.MolFromSmiles(m.smiles)) for m in molecules]
    if kind == "e3fp":
        out = []
        for m in molecules:
            fp = DataStructs.SparseBitVect(2**31)
            for atom in m.e3fp or []:
                for level, identifier in enumerate(atom):
                    if identifier >= 0:  # the same folded identifier at another level is another bit
                        fp.SetBit(level * (1 << 24) + int(identifier))
            out.append(fp)
        return out
    raise ValueError(f"unknown fingerprint {kind!r}: expected morgan or e3fp")


class RetrievalIndex:
    """The pool's fingerprints, computed once; `nearest` is the most similar pool molecule."""

    def __init__(self, pool: list[Molecule], *, kind: str = "morgan", radius: int = 2, bits: int = 2048):
        if not pool:
            raise ValueError("the retrieval pool is empty")
        self.kind, self.radius, self.bits = kind, radius, bits
        self.pool = sorted(pool, key=lambda m: m.cid)
        self.fingerprints = fingerprints(self.pool, kind, radius, bits)

    def __len__(self) -> int:
        return len(self.pool)

    def nearest(self, queries: list[Molecule]) -> list[tuple[Molecule, float]]:
        """(pool molecule, Tanimoto similarity) per query, in query order."""
        found = [(None, -1.0)] * len(queries)
        return closer(found, queries, fingerprints(queries, self.kind, self.radius, self.bits), self.pool, self.fingerprints)


def closer(found: list[tuple[Molecule | None, float]], queries: list[Molecule], query_fps: list,
           pool: list[Molecule], pool_fps: list) -> list[tuple[Molecule | None, float]]:
    """`found` (the best match per query so far) updated with one part of the pool: a higher
    similarity wins, a tie goes to the lower CID (as if the whole pool were one list sorted by CID),
    and a query never matches its own CID."""
    cids = np.asarray([m.cid for m in pool], dtype=np.int64)
    out = []
    for query, fp, (best, score) in zip(queries, query_fps, found, strict=True):
        similarities = np.asarray(DataStructs.BulkTanimotoSimilarity(fp, pool_fps))
        similarities[cids == query.cid] = -1.0  # never itself
        top = similarities.max()
        candidate = int(np.flatnonzero(similarities == top)[np.argmin(cids[similarities == top])])
        if best is None or top > score or (top == score and cids[candidate] < best.cid):
            best, score = pool[candidate], float(top)
        out.append((best, score))
    return out


def retrieve(queries: list[Molecule], pool: Iterable[list[Molecule]], *, kind: str = "morgan", radius: int = 2,
             bits: int = 2048) -> tuple[list[tuple[Prediction, float]], int]:
    """((prediction, similarity) per query in query order, pool size), the pool read a part at a time
    (`read_molecule_parts`): what is held is the queries, their matches and one part's fingerprints."""
    query_fps = fingerprints(queries, kind, radius, bits)
    found: list[tuple[Molecule | None, float]] = [(None, -1.0)] * len(queries)
    size = 0
    for part in pool:
        if part:
            found = closer(found, queries, query_fps, part, fingerprints(part, kind, radius, bits))
            size += len(part)
    if size == 0:
        raise ValueError("the retrieval pool is empty")
    return [(Prediction(id=str(query.cid), reference=query.description, prediction=match.description), similarity)
            for query, (match, similarity) in zip(queries, found)], size
