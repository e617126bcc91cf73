"""Computed properties of a molecule (RDKit), the numbers property-QA answers are checked against."""

from __future__ import annotations

from rdkit import Chem
from rdkit.Chem import Crippen, Descriptors, GraphDescriptors, Lipinski, rdMolDescriptors


def compute_properties(mol: Chem.Mol) -> dict[str, float | int]:
    """mw, exact_mass, logp, tpsa, hbd, hba, rotatable_bonds, rings, heavy_atoms, complexity.

    complexity is the Bertz CT index, RDKit's graph-complexity score. It plays the role of PubChem's
    Complexity (Hendrickson-Bertz), but the scales differ, so PubChem's value is kept beside it.
    """
    return {
        "mw": Descriptors.MolWt(mol),
        "exact_mass": Descriptors.ExactMolWt(mol),
        "logp": Crippen.MolLogP(mol),
        "tpsa": rdMolDescriptors.CalcTPSA(mol),
        "hbd": Lipinski.NumHDonors(mol),
        "hba": Lipinski.NumHAcceptors(mol),
        "rotatable_bonds": rdMolDescriptors.CalcNumRotatableBonds(mol),
        "rings": rdMolDescriptors.CalcNumRings(mol),
        "heavy_atoms": mol.GetNumHeavyAtoms(),
        "complexity": GraphDescriptors.BertzCT(mol),
    }
