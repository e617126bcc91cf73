"""The perturbations `deepmolm eval robustness` answers from, one molecule at a time."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from rdkit import Chem

from deepmolm.config import load_params
from deepmolm.data.featurize.conformer import make_conformer
from deepmolm.data.featurize.e3fp_tokens import e3fp_atom_identifiers
from deepmolm.data.featurize.render import render_png
from deepmolm.evaluation.robustness import (
    blurred_png,
    changed_share,
    e3fp_from_coordinates,
    e3fp_without_mmff,
    jpeg_png,
    perturbations,
    restyled_png,
)
from tests.conftest import PARAMS

PARAMS_ = load_params(PARAMS)
FEATURIZE = PARAMS_.featurize
MOLECULES = ["CC(=O)Oc1ccccc1C(=O)O", "C[C@H](N)C(=O)O", "CCN(CC)CCOC(=O)c1ccc(N)cc1", "OC[C@H]1OC(O)[C@H](O)[C@@H](O)[C@@H]1O"]


def shard_geometry(smiles: str) -> tuple[list, list]:
    """Heavy-atom coordinates and E3FP as the featurizer stores them for an ETKDG conformer."""
    built = make_conformer(Chem.MolFromSmiles(smiles), FEATURIZE.conformer)
    return built.heavy_coords().tolist(), e3fp_atom_identifiers(built.mol, FEATURIZE.e3fp).tolist()


def test_the_grid_names_every_perturbation_once_with_its_kind():
    names = {p.name: p.kind for p in perturbations(PARAMS_)}
    assert names == {"none": "none", "coords_recomputed": "geometry", "coords_noise_0.1": "geometry",
                     "coords_noise_0.5": "geometry", "etkdg_no_mmff": "geometry", "no_geometry": "geometry",
                     "blank_drawing": "drawing", "jpeg_q20": "drawing",
                     "blur_3px": "drawing", "restyled": "drawing"}


def test_more_coordinate_noise_changes_more_of_the_e3fp_and_the_same_seed_the_same():
    changed = {0.0: [], 0.1: [], 0.5: []}
    for cid, smiles in enumerate(MOLECULES):
        coords, stored = shard_geometry(smiles)
        for sigma in changed:
            noisy = e3fp_from_coordinates(smiles, coords, sigma, np.random.default_rng([0, cid]), FEATURIZE.conformer, FEATURIZE.e3fp)
            assert np.asarray(noisy).shape == np.asarray(stored).shape, "one row per heavy atom, one column per level"
            changed[sigma].append(changed_share(noisy, stored))
        again = e3fp_from_coordinates(smiles, coords, 0.5, np.random.default_rng([0, cid]), FEATURIZE.conformer, FEATURIZE.e3fp)
        assert again == e3fp_from_coordinates(smiles, coords, 0.5, np.random.default_rng([0, cid]), FEATURIZE.conformer, FEATURIZE.e3fp)
    mean = {sigma: sum(v) / len(v) for sigma, v in changed.items()}
    assert mean[0.0] < mean[0.1] < mean[0.5], mean
    assert mean[0.5] > 0.2, "half an angstrom moves most shells"
    assert e3fp_from_coordinates("CCO", None, 0.1, np.random.default_rng(0), FEATURIZE.conformer, FEATURIZE.e3fp) is None


def test_an_unoptimised_conformer_gives_other_identifiers_for_a_flexible_molecule():
    smiles = MOLECULES[2]
    _, stored = shard_geometry(smiles)
    plain = e3fp_without_mmff(smiles, FEATURIZE.conformer, FEATURIZE.e3fp)
    assert np.asarray(plain).shape == np.asarray(stored).shape and 0 < changed_share(plain, stored) < 1
    switched_off = FEATURIZE.conformer.model_copy(update={"method": "none"})
    assert e3fp_without_mmff(smiles, switched_off, FEATURIZE.e3fp) is not None, "the perturbation embeds whatever featurize did"


@pytest.mark.parametrize("perturb", [lambda png, s: jpeg_png(png, 20), lambda png, s: blurred_png(png, 3.0),
                                     lambda png, s: restyled_png(s, FEATURIZE.render, PARAMS_.eval.robustness)],
                         ids=["jpeg", "blur", "restyled"])
def test_a_drawing_perturbation_is_a_same_size_png_that_differs_from_training(perturb):
    smiles = MOLECULES[1]
    png = render_png(Chem.MolFromSmiles(smiles), FEATURIZE.render)
    out = perturb(png, smiles)
    with Image.open(io.BytesIO(out)) as image, Image.open(io.BytesIO(png)) as original:
        assert image.format == "PNG" and image.size == original.size
        difference = np.abs(np.asarray(image.convert("L"), dtype=int) - np.asarray(original.convert("L"), dtype=int))
    assert difference.mean() > 0.1, "the model sees another picture"
    assert perturb(png, smiles) == out, "deterministic"


def pixels(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:  # not the bytes: RDKit writes the molecule into the PNG's metadata
        return np.asarray(image.convert("L"), dtype=int)


def test_the_restyled_drawing_has_no_wedges_where_training_has_them():
    """Drawn without stereo wedges, the chiral molecule looks exactly like its stereo-free twin;
    in training's style the two differ by the hashed wedge."""
    smiles = MOLECULES[1]
    plain = Chem.MolFromSmiles(smiles)
    Chem.RemoveStereochemistry(plain)
    style = PARAMS_.eval.robustness
    restyled = pixels(restyled_png(smiles, FEATURIZE.render, style))
    assert (restyled == pixels(restyled_png(Chem.MolToSmiles(plain), FEATURIZE.render, style))).all()
    trained = pixels(render_png(Chem.MolFromSmiles(smiles), FEATURIZE.render))
    assert (np.abs(trained - pixels(render_png(plain, FEATURIZE.render))) > 50).sum() > 1000


def test_changed_share_counts_identifiers_that_differ():
    assert changed_share([[1, 2], [3, -1]], [[1, 2], [3, -1]]) == 0.0
    assert changed_share([[1, 2], [3, -1]], [[1, 9], [3, -1]]) == 0.25
    assert changed_share(None, [[1]]) is None and changed_share([[1, 2]], [[1]]) == 1.0
