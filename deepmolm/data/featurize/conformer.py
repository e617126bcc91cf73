"""One 3D conformer per molecule: PubChem's when the raw row has it, else ETKDGv3 (+ MMFF94); when
neither exists, optionally the flat 2D depiction's coordinates (`flat_conformer`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rdkit import Chem, rdBase
from rdkit.Chem import AllChem, rdDepictor, rdDistGeom
from rdkit.Geometry import Point3D

from deepmolm.config import ConformerParams


@dataclass(frozen=True)
class Conformer:
    source: str  # pubchem, etkdg, etkdg_random_coords, depiction_2d or none
    mol: Chem.Mol | None  # with hydrogens and one conformer; heavy atoms first, in canonical order
    detail: str = ""

    def heavy_coords(self) -> np.ndarray | None:
        if self.mol is None:
            return None
        heavy = [a.GetIdx() for a in self.mol.GetAtoms() if a.GetAtomicNum() > 1]
        return self.mol.GetConformer().GetPositions()[heavy].astype(np.float32)


def make_conformer(mol: Chem.Mol, params: ConformerParams, pubchem_coords: np.ndarray | None = None) -> Conformer:
    """`pubchem_coords` are heavy-atom positions in the atom order of `mol`, when known."""
    if pubchem_coords is not None:
        return _from_coordinates(mol, np.asarray(pubchem_coords, dtype=float))
    if params.method == "none":
        return Conformer("none", None, "conformer generation switched off")
    if mol.GetNumHeavyAtoms() > params.max_heavy_atoms:
        return Conformer("none", None, f"{mol.GetNumHeavyAtoms()} heavy atoms > max_heavy_atoms")
    with_h = Chem.AddHs(mol)
    for source, random_coords in _attempts(mol, params):
        embed = rdDistGeom.ETKDGv3()
        embed.randomSeed = params.seed
        embed.maxIterations = params.max_iterations  # counted, never timed: the same on every machine
        embed.useRandomCoords = random_coords
        with rdBase.BlockLogs():
            conf_id = rdDistGeom.EmbedMolecule(with_h, embed)
        if conf_id == 0:
            _separate_fragments(with_h)
            _optimise(with_h, params)
            return Conformer(source, with_h)
    return Conformer("none", None, "ETKDG embedding failed")


def flat_conformer(mol: Chem.Mol) -> Conformer:
    """RDKit's 2D depiction coordinates (z = 0) for a molecule without a 3D conformer (too large to
    embed, embedding failed, past its time limit). Its E3FP is not a 3D fingerprint, but every heavy
    atom still gets its first-shell identifier, so the model still sees which atoms and how many: a
    molecule with no tokens at all reads as the smallest molecule there is (on ChEBI-20's test split
    the 11 such molecules, all large, made 10.5 g/mol of the model's 66.8 mw MAE)."""
    with_h = Chem.AddHs(mol)
    rdDepictor.Compute2DCoords(with_h)
    return Conformer("depiction_2d", with_h)


def _attempts(mol: Chem.Mol, params: ConformerParams) -> list[tuple[str, bool]]:
    """Embedding attempts in order. Large molecules start from random coordinates: measured on
    ChEBI-20 (docs/benchmarks.md) that is faster there and ends at equal or lower MMFF energy."""
    attempts = [("etkdg", False), ("etkdg_random_coords", True)]
    if mol.GetNumHeavyAtoms() > params.random_coords_above_heavy_atoms:
        attempts.reverse()
    if not params.random_coords_fallback:
        attempts = attempts[:1]
    return attempts


FRAGMENT_GAP = 4.0  # Angstrom between neighbouring fragments' atoms along x


def _separate_fragments(mol: Chem.Mol) -> None:
    """ETKDG embeds disconnected fragments (salts, hydrates) on top of each other: 12 of 18 small
    multi-fragment ChEBI-20 molecules had heavy atoms closer than 0.5 A. Lay the fragments side by
    side along x, each centred, so no atom sits on another one's position."""
    fragments = Chem.GetMolFrags(mol)
    if len(fragments) < 2:
        return
    conformer = mol.GetConformer()
    positions = conformer.GetPositions()
    left_edge = 0.0
    for atoms in fragments:
        block = positions[list(atoms)] - positions[list(atoms)].mean(axis=0)
        shift = left_edge - block[:, 0].min()
        for atom, (x, y, z) in zip(atoms, block):
            conformer.SetAtomPosition(atom, Point3D(float(x + shift), float(y), float(z)))
        left_edge = shift + block[:, 0].max() + FRAGMENT_GAP


def _optimise(mol: Chem.Mol, params: ConformerParams) -> None:
    if params.mmff and AllChem.MMFFHasAllMoleculeParams(mol):
        with rdBase.BlockLogs():
            AllChem.MMFFOptimizeMolecule(mol, mmffVariant="MMFF94", maxIters=params.mmff_max_iters)


def _from_coordinates(mol: Chem.Mol, coords: np.ndarray) -> Conformer:
    if coords.shape != (mol.GetNumAtoms(), 3) or not np.isfinite(coords).all():
        return Conformer("none", None, f"PubChem coordinates of shape {coords.shape} do not fit the molecule")
    heavy = Chem.Mol(mol)
    conformer = Chem.Conformer(heavy.GetNumAtoms())
    for i, (x, y, z) in enumerate(coords):
        conformer.SetAtomPosition(i, Point3D(float(x), float(y), float(z)))
    conformer.Set3D(True)
    heavy.AddConformer(conformer, assignId=True)
    return Conformer("pubchem", Chem.AddHs(heavy, addCoords=True))
