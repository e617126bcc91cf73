"""The property sets MuMo is fine-tuned on (MoleculeNet's ESOL and FreeSolv, from local CSV files) and
their seeded 80/10/10 splits, random or by Bemis-Murcko scaffold.

Every CSV row is accounted for: a molecule with its target, or a rejection with the row and a reason.
The scaffold split keeps each scaffold in one part, so the test molecules are structurally new to
the model: large scaffold groups go to training first, the rest in a seeded order, as the scaffold
splits of chemprop and MoleculeNet's successors do.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rdkit import Chem, RDLogger
from rdkit.Chem.Scaffolds import MurckoScaffold

from deepmolm.data.sources.records import inchikey

# name -> (file under the MoleculeNet directory, SMILES column, target column, unit)
PROPERTY_SETS = {
    "esol": ("delaney-processed.csv", "smiles", "measured log solubility in mols per litre", "log mol/L"),
    "freesolv": ("SAMPL.csv", "smiles", "expt", "kcal/mol"),
}
PARTS = ("train", "valid", "test")


@dataclass(frozen=True)
class PropertySet:
    name: str
    unit: str
    smiles: list[str]
    targets: np.ndarray  # float64 [molecules]
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (CSV line, reason)

    @property
    def rows(self) -> int:
        return len(self.smiles) + len(self.rejected)


def read_property_set(name: str, directory: Path) -> PropertySet:
    if name not in PROPERTY_SETS:
        raise ValueError(f"unknown property set {name!r}: expected one of {', '.join(PROPERTY_SETS)}")
    filename, smiles_column, target_column, unit = PROPERTY_SETS[name]
    path = Path(directory) / filename
    if not path.is_file():
        raise FileNotFoundError(f"no {name} file at {path}")
    smiles, targets, rejected = [], [], []
    RDLogger.DisableLog("rdApp.*")  # a bad SMILES is a recorded rejection, not a log line
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = {smiles_column, target_column} - set(reader.fieldnames or [])
            if missing:
                raise ValueError(f"{path} has no column(s) {sorted(missing)}")
            for line, row in enumerate(reader, start=2):
                text = (row[smiles_column] or "").strip()
                try:
                    value = float(row[target_column])
                except (TypeError, ValueError):
                    rejected.append((line, "non_numeric_target"))
                    continue
                if not math.isfinite(value):
                    rejected.append((line, "non_numeric_target"))
                elif not text or Chem.MolFromSmiles(text) is None:
                    rejected.append((line, "unparseable_smiles"))
                else:
                    smiles.append(text)
                    targets.append(value)
    finally:
        RDLogger.EnableLog("rdApp.*")
    return PropertySet(name, unit, smiles, np.asarray(targets, dtype=np.float64), rejected)


def property_set_inchikeys(names: Iterable[str], directory: Path) -> dict[str, str]:
    """InChIKey -> "<set> molecule N" for every molecule of the named sets: what a pretraining corpus leaves out."""
    keys: dict[str, str] = {}
    for name in names:
        for number, smiles in enumerate(read_property_set(name, directory).smiles, start=1):
            if key := inchikey(smiles):
                keys.setdefault(key, f"{name} molecule {number}")
    return keys


def _sizes(n: int, fractions: tuple[float, float, float]) -> tuple[int, int]:
    train = int(round(fractions[0] * n))
    valid = int(round(fractions[1] * n))
    return train, valid


def random_split(n: int, seed: int, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> dict[str, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    train, valid = _sizes(n, fractions)
    return {"train": order[:train], "valid": order[train:train + valid], "test": order[train + valid:]}


def scaffold(smiles: str) -> str:
    return MurckoScaffold.MurckoScaffoldSmiles(mol=Chem.MolFromSmiles(smiles), includeChirality=False)


def scaffold_split(smiles: list[str], seed: int,
                   fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> dict[str, np.ndarray]:
    """Whole scaffold groups per part. Groups bigger than half the validation or test size go first
    (to training, as long as it has room); the others follow in a seeded random order."""
    groups: dict[str, list[int]] = {}
    for index, text in enumerate(smiles):
        groups.setdefault(scaffold(text), []).append(index)
    train_size, valid_size = _sizes(len(smiles), fractions)
    test_size = len(smiles) - train_size - valid_size
    big = [g for g in groups.values() if len(g) > min(valid_size, test_size) / 2]
    small = [g for g in groups.values() if len(g) <= min(valid_size, test_size) / 2]
    rng = np.random.default_rng(seed)
    rng.shuffle(big)
    rng.shuffle(small)
    parts: dict[str, list[int]] = {"train": [], "valid": [], "test": []}
    for group in big + small:
        if len(parts["train"]) + len(group) <= train_size:
            parts["train"] += group
        elif len(parts["valid"]) + len(group) <= valid_size:
            parts["valid"] += group
        else:
            parts["test"] += group
    return {name: np.asarray(sorted(indices), dtype=np.int64) for name, indices in parts.items()}
