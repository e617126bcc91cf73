"""MuMo's Structured Fusion Pipeline: a molecule and its conformer -> one graph whose geometry cannot
depend on the frame the conformer happens to be in, plus a multiscale partition into fragments.

Geometry enters only as distances and angles: each bond's length, and for every pair of bonds that
share an atom (a geometric triplet i-j-k) the angle at j. Coordinates are read here and never
returned, so nothing downstream can learn the orientation of a conformer. Atoms follow the order of
the molecule given (the shards' canonical heavy-atom order, the order of their `coords`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rdkit import Chem
from rdkit.Chem import BRICS
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from deepmolm.data.featurize.outcome import FeaturizeError

_HYBRIDIZATIONS = (Chem.HybridizationType.S, Chem.HybridizationType.SP, Chem.HybridizationType.SP2,
                   Chem.HybridizationType.SP3, Chem.HybridizationType.SP3D, Chem.HybridizationType.SP3D2)
_CHIRALITY = (Chem.ChiralType.CHI_UNSPECIFIED, Chem.ChiralType.CHI_TETRAHEDRAL_CW, Chem.ChiralType.CHI_TETRAHEDRAL_CCW)
_BOND_TYPES = (Chem.BondType.SINGLE, Chem.BondType.DOUBLE, Chem.BondType.TRIPLE, Chem.BondType.AROMATIC)
_STEREO = (Chem.BondStereo.STEREONONE, Chem.BondStereo.STEREOANY, Chem.BondStereo.STEREOZ, Chem.BondStereo.STEREOE,
           Chem.BondStereo.STEREOCIS, Chem.BondStereo.STEREOTRANS)

# Each categorical feature: its name and how many codes it has (the last code is "other"), which is
# what an embedding table per feature needs.
ATOM_FEATURES = (("atomic_num", 120), ("degree", 8), ("formal_charge", 8), ("hybridization", 7),
                 ("aromatic", 2), ("total_hs", 6), ("chirality", 4), ("in_ring", 2))
BOND_FEATURES = (("bond_type", 5), ("conjugated", 2), ("in_ring", 2), ("stereo", 7))
FRAGMENT_SCALES = ("brics", "ring_systems")


def _code(value, choices) -> int:
    return choices.index(value) if value in choices else len(choices)


def _clip(value: int, low: int, size: int) -> int:
    """value - low within [0, size - 2]; anything outside is the last code, "other"."""
    shifted = value - low
    return shifted if 0 <= shifted < size - 1 else size - 1


def atom_features(atom: Chem.Atom) -> list[int]:
    return [
        _clip(atom.GetAtomicNum(), 0, 120),
        _clip(atom.GetDegree(), 0, 8),
        _clip(atom.GetFormalCharge(), -3, 8),
        _code(atom.GetHybridization(), _HYBRIDIZATIONS),
        int(atom.GetIsAromatic()),
        _clip(atom.GetTotalNumHs(), 0, 6),
        _code(atom.GetChiralTag(), _CHIRALITY),
        int(atom.IsInRing()),
    ]


def bond_features(bond: Chem.Bond) -> list[int]:
    return [_code(bond.GetBondType(), _BOND_TYPES), int(bond.GetIsConjugated()), int(bond.IsInRing()),
            _code(bond.GetStereo(), _STEREO)]


@dataclass(frozen=True)
class StructuredGraph:
    atoms: np.ndarray           # int16 [atoms, len(ATOM_FEATURES)]
    bonds: np.ndarray           # int32 [bonds, 2]: the two atoms of each bond
    bond_features: np.ndarray   # int16 [bonds, len(BOND_FEATURES)]
    bond_lengths: np.ndarray    # float32 [bonds], angstrom
    triplets: np.ndarray        # int32 [triplets, 3]: atoms i, j, k with bonds i-j and j-k (i < k)
    triplet_bonds: np.ndarray   # int32 [triplets, 2]: the indices of those two bonds
    angles: np.ndarray          # float32 [triplets], radians, the angle i-j-k at j
    fragments: dict[str, np.ndarray]  # scale -> int32 [atoms]: each atom's fragment, numbered from 0


def _components(n_atoms: int, edges: list[tuple[int, int]]) -> np.ndarray:
    """Connected components as labels, numbered in order of their lowest atom."""
    pairs = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n_atoms, n_atoms))
    _, labels = connected_components(graph, directed=False)
    return labels.astype(np.int32)


def fragment_partition(mol: Chem.Mol) -> dict[str, np.ndarray]:
    """`brics`: the pieces left when BRICS's retrosynthetic bonds are cut. `ring_systems`: each set of
    fused rings is one fragment, and each chain between them another."""
    bonds = [(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in mol.GetBonds()]
    cut = {tuple(sorted(pair)) for pair, _ in BRICS.FindBRICSBonds(mol)}
    brics = _components(mol.GetNumAtoms(), [b for b in bonds if tuple(sorted(b)) not in cut])
    ring_of = [a.IsInRing() for a in mol.GetAtoms()]
    fused = []
    for ring in mol.GetRingInfo().AtomRings():  # atoms of one ring belong together; shared atoms fuse rings
        fused += [(ring[0], other) for other in ring[1:]]
    chains = [(a, b) for a, b in bonds if not ring_of[a] and not ring_of[b]]
    systems = _components(mol.GetNumAtoms(), fused + chains)
    return {"brics": brics, "ring_systems": systems}


def heavy_atoms(mol: Chem.Mol) -> Chem.Mol:
    """Every hydrogen atom out, RemoveHs's exceptions included (isolated H+, deuterium, bridging H):
    the shards' coordinates are of atoms heavier than hydrogen, in the molecule's order."""
    hydrogens = [a.GetIdx() for a in mol.GetAtoms() if a.GetAtomicNum() == 1]
    if not hydrogens:
        return mol
    editable = Chem.RWMol(mol)
    for index in reversed(hydrogens):
        editable.RemoveAtom(index)
    heavy = editable.GetMol()
    heavy.UpdatePropertyCache(strict=False)
    return heavy


def structured_graph(mol: Chem.Mol, coords: np.ndarray | list | None) -> StructuredGraph:
    """The unified graph of a heavy-atom molecule and its heavy-atom coordinates (same atom order)."""
    if mol is None or mol.GetNumAtoms() == 0:
        raise FeaturizeError("empty_molecule", "no atoms")
    mol = heavy_atoms(mol)
    if coords is None:
        raise FeaturizeError("no_conformer", "the structured graph needs a conformer")
    xyz = np.asarray(coords, dtype=np.float64)
    if xyz.shape != (mol.GetNumAtoms(), 3):
        raise FeaturizeError("coords_mismatch", f"coordinates of shape {xyz.shape} for {mol.GetNumAtoms()} heavy atoms")
    if not np.isfinite(xyz).all():
        raise FeaturizeError("coords_mismatch", "non-finite coordinates")
    pairs = np.array([(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in mol.GetBonds()], dtype=np.int32).reshape(-1, 2)
    lengths = np.linalg.norm(xyz[pairs[:, 0]] - xyz[pairs[:, 1]], axis=1)
    triplets, triplet_bonds = [], []
    for atom in mol.GetAtoms():
        j = atom.GetIdx()
        around = sorted((b.GetOtherAtomIdx(j), b.GetIdx()) for b in atom.GetBonds())
        for x in range(len(around)):
            for y in range(x + 1, len(around)):
                (i, bond_ij), (k, bond_jk) = around[x], around[y]
                triplets.append((i, j, k))
                triplet_bonds.append((bond_ij, bond_jk))
    triplets = np.array(triplets, dtype=np.int32).reshape(-1, 3)
    u = xyz[triplets[:, 0]] - xyz[triplets[:, 1]]
    v = xyz[triplets[:, 2]] - xyz[triplets[:, 1]]
    cosine = (u * v).sum(axis=1) / np.maximum(np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1), 1e-12)
    return StructuredGraph(
        atoms=np.array([atom_features(a) for a in mol.GetAtoms()], dtype=np.int16).reshape(-1, len(ATOM_FEATURES)),
        bonds=pairs,
        bond_features=np.array([bond_features(b) for b in mol.GetBonds()], dtype=np.int16).reshape(-1, len(BOND_FEATURES)),
        bond_lengths=lengths.astype(np.float32),
        triplets=triplets,
        triplet_bonds=np.array(triplet_bonds, dtype=np.int32).reshape(-1, 2),
        angles=np.arccos(np.clip(cosine, -1.0, 1.0)).astype(np.float32),
        fragments=fragment_partition(mol),
    )
