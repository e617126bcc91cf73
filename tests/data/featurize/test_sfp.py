"""The Structured Fusion Pipeline on real RDKit conformers: invariant to where the conformer sits and
how it is turned, chemically sensible geometry, and fragments that cover the molecule."""

from __future__ import annotations

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

from deepmolm.data.featurize.outcome import FeaturizeError
from deepmolm.data.featurize.sfp import ATOM_FEATURES, BOND_FEATURES, structured_graph

MOLECULES = {
    "aspirin": "CC(=O)Oc1ccccc1C(=O)O",
    "naphthol ether": "COc1ccc2cc(O)ccc2c1",
    "stereo": "C/C=C/[C@H](N)C(=O)O",
    "charged": "C[N+](C)(C)CC(=O)[O-]",
}


def conformer(smiles: str, seed: int = 7) -> tuple[Chem.Mol, np.ndarray]:
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    assert AllChem.EmbedMolecule(mol, randomSeed=seed) == 0
    heavy = Chem.RemoveHs(mol)
    return heavy, heavy.GetConformer().GetPositions()


def random_rigid_motion(xyz: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    rotation = q * np.sign(np.diag(r))
    if np.linalg.det(rotation) < 0:
        rotation[:, 0] *= -1  # a proper rotation, not a mirror
    return xyz @ rotation.T + rng.normal(scale=50.0, size=3)


@pytest.mark.parametrize("name", MOLECULES)
def test_rotating_and_translating_the_conformer_changes_no_feature(name):
    mol, xyz = conformer(MOLECULES[name])
    reference = structured_graph(mol, xyz)
    for seed in range(3):
        moved = random_rigid_motion(xyz, seed)
        assert not np.allclose(moved, xyz), "the conformer really moved"
        graph = structured_graph(mol, moved)
        for field in ("atoms", "bonds", "bond_features", "triplets", "triplet_bonds"):
            assert np.array_equal(getattr(graph, field), getattr(reference, field)), field
        np.testing.assert_allclose(graph.bond_lengths, reference.bond_lengths, atol=1e-4)
        np.testing.assert_allclose(graph.angles, reference.angles, atol=1e-4)
        for scale, labels in reference.fragments.items():
            assert np.array_equal(graph.fragments[scale], labels)


def test_shapes_and_geometry_are_chemically_sensible():
    mol, xyz = conformer("c1ccccc1C(=O)O")  # benzoic acid
    graph = structured_graph(mol, xyz)
    n_atoms, n_bonds = mol.GetNumAtoms(), mol.GetNumBonds()
    assert graph.atoms.shape == (n_atoms, len(ATOM_FEATURES))
    assert graph.bond_features.shape == (n_bonds, len(BOND_FEATURES)) and graph.bonds.shape == (n_bonds, 2)
    degrees = [a.GetDegree() for a in mol.GetAtoms()]
    assert len(graph.triplets) == sum(d * (d - 1) // 2 for d in degrees), "one triplet per pair of bonds at an atom"
    aromatic = [i for i, b in enumerate(mol.GetBonds()) if b.GetIsAromatic()]
    assert np.all(np.abs(graph.bond_lengths[aromatic] - 1.39) < 0.05), graph.bond_lengths[aromatic]
    ring = [t for t, (i, j, k) in enumerate(graph.triplets) if all(mol.GetAtomWithIdx(int(a)).GetIsAromatic() for a in (i, j, k))]
    assert np.all(np.abs(np.degrees(graph.angles[ring]) - 120.0) < 4.0)
    for (i, j, k), (b1, b2) in zip(graph.triplets, graph.triplet_bonds):
        assert {int(i), int(j)} == set(graph.bonds[b1].tolist()) and {int(j), int(k)} == set(graph.bonds[b2].tolist())


def test_fragments_cover_the_molecule_at_every_scale():
    mol, xyz = conformer(MOLECULES["aspirin"])
    fragments = structured_graph(mol, xyz).fragments
    assert set(fragments) == {"brics", "ring_systems"}
    assert fragments["brics"].max() >= 1, "BRICS cuts aspirin's ester"
    ring_atoms = [a.GetIdx() for a in mol.GetAtoms() if a.IsInRing()]
    assert len({int(fragments["ring_systems"][a]) for a in ring_atoms}) == 1, "one benzene ring, one system"
    naphthol, xyz = conformer(MOLECULES["naphthol ether"])
    systems = structured_graph(naphthol, xyz).fragments["ring_systems"]
    assert len({int(systems[a.GetIdx()]) for a in naphthol.GetAtoms() if a.IsInRing()}) == 1, "fused rings are one"
    for labels in fragments.values():
        assert labels.shape == (mol.GetNumAtoms(),) and set(labels.tolist()) == set(range(labels.max() + 1))


def test_a_single_atom_has_no_bonds_and_no_triplets():
    mol = Chem.MolFromSmiles("[Na+]")
    graph = structured_graph(mol, np.zeros((1, 3)))
    assert graph.bonds.shape == (0, 2) and graph.triplets.shape == (0, 3) and graph.angles.shape == (0,)


@pytest.mark.parametrize(("coords", "reason"), [(None, "no_conformer"), (np.zeros((2, 3)), "coords_mismatch"),
                                                (np.full((13, 3), np.nan), "coords_mismatch")])
def test_unusable_coordinates_are_a_reason_not_a_crash(coords, reason):
    mol = Chem.MolFromSmiles(MOLECULES["aspirin"])
    with pytest.raises(FeaturizeError) as error:
        structured_graph(mol, coords)
    assert error.value.reason == reason
