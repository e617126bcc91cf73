"""ESOL and FreeSolv from ../shared, their seeded splits, and the random-forest baseline on them."""

from __future__ import annotations

import numpy as np
import pytest

from deepmolm.data.property_sets import random_split, read_property_set, scaffold, scaffold_split
from deepmolm.evaluation.mumo.baseline import molecule_features, random_forest
from deepmolm.training.metrics import regression_errors


@pytest.fixture(scope="module")
def esol(shared):
    return read_property_set("esol", shared / "moleculenet")


def test_every_row_is_a_molecule_or_a_rejection(shared, esol, tmp_path):
    freesolv = read_property_set("freesolv", shared / "moleculenet")
    assert (esol.rows, freesolv.rows) == (1128, 642)
    assert len(esol.smiles) == len(esol.targets) and esol.rejected == [] and esol.unit == "log mol/L"
    broken = tmp_path / "SAMPL.csv"
    broken.write_text("iupac,smiles,expt,calc\na,CCO,-5.0,-4\nb,C1CC,-3.2,-3\nc,CCN,n/a,-1\n")
    small = read_property_set("freesolv", tmp_path)
    assert small.smiles == ["CCO"] and small.rejected == [(3, "unparseable_smiles"), (4, "non_numeric_target")]
    with pytest.raises(ValueError, match="unknown property set"):
        read_property_set("tox21", tmp_path)


@pytest.mark.parametrize("kind", ["random", "scaffold"])
def test_splits_are_80_10_10_disjoint_complete_and_seeded(esol, kind):
    def split(seed):
        return random_split(len(esol.smiles), seed) if kind == "random" else scaffold_split(esol.smiles, seed)

    parts = split(0)
    together = np.concatenate([parts["train"], parts["valid"], parts["test"]])
    assert sorted(together.tolist()) == list(range(len(esol.smiles))), "every molecule in exactly one part"
    assert abs(len(parts["train"]) - 0.8 * len(esol.smiles)) <= 1 + (20 if kind == "scaffold" else 0)
    assert all(np.array_equal(parts[p], split(0)[p]) for p in parts), "the same seed, the same split"
    assert not np.array_equal(np.sort(split(1)["test"]), np.sort(parts["test"])), "another seed, another split"
    if kind == "scaffold":
        scaffolds = {p: {scaffold(esol.smiles[i]) for i in parts[p]} for p in parts}
        assert not scaffolds["train"] & scaffolds["test"] and not scaffolds["valid"] & scaffolds["test"]


def test_the_random_forest_learns_solubility(esol):
    parts = random_split(len(esol.smiles), 0)
    features = molecule_features(esol.smiles)
    assert features.shape[0] == len(esol.smiles) and np.isfinite(features).all()
    model = random_forest(features[parts["train"]], esol.targets[parts["train"]], seed=0, trees=100, workers=2)
    errors = regression_errors(esol.targets[parts["test"]], model.predict(features[parts["test"]]))
    spread = regression_errors(esol.targets[parts["test"]], np.full(len(parts["test"]), esol.targets[parts["train"]].mean()))
    assert errors["n"] == len(parts["test"])
    assert errors["rmse"] < 0.5 * spread["rmse"], (errors, spread)  # far better than predicting the mean
    again = random_forest(features[parts["train"]], esol.targets[parts["train"]], seed=0, trees=100, workers=2)
    assert model.n_jobs == 1, "trees summed on one thread, in order: the same bytes every run"
    assert again.predict(features[parts["test"]]).tobytes() == model.predict(features[parts["test"]]).tobytes()
