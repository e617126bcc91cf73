"""PubChem SDF records -> heavy-atom coordinates in the atom order of the record's SMILES."""

from __future__ import annotations

import numpy as np
from rdkit import Chem, rdBase


def split_sdf_records(text: str) -> dict[int, str]:
    """CID -> mol block of each record in a (multi-record) SDF; records without a CID are skipped."""
    records: dict[int, str] = {}
    for block in text.split("$$$$"):
        block = block.strip("\r\n")
        if not block.strip():
            continue
        cid = _sdf_property(block, "PUBCHEM_COMPOUND_CID")
        if cid is None:
            first = block.splitlines()[0].strip()
            cid = first if first.isdigit() else None
        if cid is not None and cid.strip().isdigit():
            records[int(cid)] = block + "\n$$$$\n"
    return records


def _sdf_property(block: str, name: str) -> str | None:
    lines = block.splitlines()
    tag = f"<{name}>"
    for i, line in enumerate(lines):
        if line.startswith(">") and tag in line and i + 1 < len(lines):
            return lines[i + 1].strip()
    return None


def heavy_atom_coords(sdf_block: str, smiles: str) -> tuple[list[list[float]] | None, str]:
    """Coordinates of the SMILES' heavy atoms, taken from the 3D record, and a status word.

    The record's atoms are matched onto the SMILES molecule by substructure, so row i of the result
    is the position of atom i of `Chem.MolFromSmiles(smiles)`. Symmetric molecules match several ways;
    any match is a valid assignment because it maps atoms onto chemically equivalent ones.
    """
    with rdBase.BlockLogs():
        mol3d = Chem.MolFromMolBlock(sdf_block, removeHs=False, sanitize=True)
        ref = Chem.MolFromSmiles(smiles)
    if mol3d is None:
        return None, "unreadable_3d_record"
    if ref is None:
        return None, "unreadable_smiles"
    with rdBase.BlockLogs():
        heavy = Chem.RemoveHs(mol3d, sanitize=False)
    if heavy.GetNumAtoms() != ref.GetNumAtoms():
        return None, "atom_count_mismatch"
    match = heavy.GetSubstructMatch(ref, useChirality=False)
    if len(match) != ref.GetNumAtoms():
        # Charge or aromaticity conventions can differ; retry on the bare connectivity.
        match = _connectivity_match(heavy, ref)
    if match is None:
        return None, "structure_mismatch"
    positions = heavy.GetConformer().GetPositions()[list(match)]
    if not np.isfinite(positions).all():
        return None, "non_finite_coordinates"
    return positions.astype(np.float32).tolist(), "pubchem_3d"


def _connectivity_match(heavy: Chem.Mol, ref: Chem.Mol) -> tuple[int, ...] | None:
    params = Chem.AdjustQueryParameters.NoAdjustments()
    params.makeBondsGeneric = True
    params.makeAtomsGeneric = False
    query = Chem.AdjustQueryProperties(ref, params)
    match = heavy.GetSubstructMatch(query, useChirality=False)
    return match if len(match) == ref.GetNumAtoms() else None
