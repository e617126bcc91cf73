"""The classic baseline MuMo is reported beside: a random forest (scikit-learn) on Morgan fingerprint
bits plus RDKit's 2D descriptors, trained on the same split in the same run."""

from __future__ import annotations

import numpy as np
from rdkit import Chem
from rdkit.Chem import Descriptors, rdFingerprintGenerator
from sklearn.ensemble import RandomForestRegressor


def molecule_features(smiles: list[str], *, radius: int = 2, bits: int = 2048) -> np.ndarray:
    """[molecules, bits + descriptors]: Morgan bits, then every RDKit descriptor (a descriptor RDKit
    cannot compute for a molecule, or an infinite one, becomes 0)."""
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=bits)
    names = [name for name, _ in Descriptors.descList]
    rows = []
    for text in smiles:
        mol = Chem.MolFromSmiles(text)
        if mol is None:
            raise ValueError(f"unparseable SMILES {text!r} (datasets.read_property_set rejects these)")
        values = Descriptors.CalcMolDescriptors(mol, missingVal=0.0)
        rows.append(np.concatenate([generator.GetFingerprintAsNumPy(mol).astype(np.float32),
                                    np.asarray([values[n] for n in names], dtype=np.float64)]))
    features = np.asarray(rows, dtype=np.float64).reshape(len(smiles), -1)
    return np.nan_to_num(features, nan=0.0, posinf=0.0, neginf=0.0).clip(-1e9, 1e9).astype(np.float32)


def random_forest(train_x: np.ndarray, train_y: np.ndarray, seed: int, *, trees: int = 500,
                  workers: int = 1) -> RandomForestRegressor:
    """Trees are grown on `workers` threads (each from its own seed: the same trees); predictions then
    sum the trees on one, in tree order: threads adding into one array made the last digits of the
    baseline's errors differ between two runs of the same benchmark."""
    model = RandomForestRegressor(n_estimators=trees, random_state=seed, n_jobs=workers)
    return model.fit(train_x, train_y).set_params(n_jobs=1)


