"""Which molecules the DeepEncoder is pretrained on: the training split's own (never its held-out
molecules) and the first rows of an unlabelled SMILES file (MOSES by default), every molecule whose
InChIKey skeleton (its first block: the connectivity) belongs to an evaluated split left out, so no
test molecule is drawn in any training. Every row read is counted as used or left out, with why.
"""

from __future__ import annotations

import gzip
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rdkit import Chem, RDLogger

from deepmolm.data.instructions import held_out


SHARD_COLUMNS = ["cid", "split", "smiles", "inchikey"]


@dataclass
class Corpus:
    train: list[str]          # SMILES trained on
    holdout: list[str]        # SMILES of the held-out metrics
    counts: dict = field(default_factory=dict)  # per source: read, used, left out by reason


def skeleton(inchikey: str) -> str:
    return inchikey.split("-")[0]


def read_smiles_file(path: Path, limit: int) -> list[str]:
    """The first `limit` SMILES of a one-column file (gzip or plain) with a `SMILES` header."""
    opener = gzip.open if str(path).endswith(".gz") else open
    smiles: list[str] = []
    with opener(path, "rt") as lines:
        header = next(lines, "").strip()
        if header.split(",")[0].lower() != "smiles":
            raise ValueError(f"{path}: expected a SMILES header line, found {header[:60]!r}")
        for line in lines:
            if len(smiles) >= limit:
                break
            if text := line.strip().split(",")[0]:
                smiles.append(text)
    return smiles


def build_corpus(shard_rows: list[dict], *, train_splits: list[str] | None, eval_splits: list[str],
                 holdout_fraction: float, holdout_seed: int, use_train_split: bool,
                 extra_file: Path | None, extra_molecules: int, corpus_holdout: int, seed: int) -> Corpus:
    """The pretraining molecules and a seeded held-out slice of `corpus_holdout` of them, from a shard
    version's rows (cid, split, smiles, inchikey: `SHARD_COLUMNS`) and the extra file."""
    evaluated = {skeleton(row["inchikey"]) for row in shard_rows if row["split"] in eval_splits}
    counts: dict[str, Counter] = {"shards": Counter(), "extra": Counter()}
    chosen: list[str] = []
    for row in shard_rows:
        counts["shards"]["read"] += 1
        if row["split"] in eval_splits:
            reason = "evaluated_split"
        elif not use_train_split or (train_splits is not None and row["split"] not in train_splits):
            reason = "not_a_train_split"
        elif held_out(row["cid"], holdout_fraction, holdout_seed):
            reason = "train_holdout"
        elif skeleton(row["inchikey"]) in evaluated:
            reason = "skeleton_in_evaluated_split"
        else:
            chosen.append(row["smiles"])
            reason = "used"
        counts["shards"][reason] += 1
    if extra_file is not None and extra_molecules:
        RDLogger.DisableLog("rdApp.*")  # a bad row is counted, not printed
        seen = set(chosen)
        for text in read_smiles_file(extra_file, extra_molecules):
            counts["extra"]["read"] += 1
            mol = Chem.MolFromSmiles(text)
            if mol is None or mol.GetNumAtoms() == 0:
                reason = "unparseable_smiles"
            elif skeleton(Chem.MolToInchiKey(mol) or "-") in evaluated:
                reason = "skeleton_in_evaluated_split"
            elif text in seen:
                reason = "duplicate"
            else:
                seen.add(text)
                chosen.append(text)
                reason = "used"
            counts["extra"][reason] += 1
    order = np.random.default_rng(seed).permutation(len(chosen))
    held = set(order[:min(corpus_holdout, len(chosen) // 2)].tolist())
    return Corpus(train=[s for i, s in enumerate(chosen) if i not in held],
                  holdout=[s for i, s in enumerate(chosen) if i in held],
                  counts={source: dict(c) for source, c in counts.items()})
