"""E3FP identifiers per heavy atom and shell level.

e3fp's Fingerprinter grows one shell per heavy atom and level (radius = level x radius_multiplier);
`level_shells[l]` holds every unique shell up to level l. The shells new at level l are the atoms'
shells of that level: their identifier (as an unsigned 32-bit integer, folded modulo `bits`) goes to
row = atom, column = l. An atom has no shell at a level (-1) when its shell there duplicates a
substructure seen before, or when the fingerprinter stopped early because nothing new appeared.
The set of values in the array therefore equals the e3fp fingerprint folded to `bits`. Atoms without
a heavy-atom neighbour (lone ions, methane) are left out by e3fp and keep -1 in every column.
"""

from __future__ import annotations

import logging

import numpy as np
from rdkit import Chem

from deepmolm.config import E3fpParams


def _import_e3fp():
    """e3fp calls logging.basicConfig(level=INFO) when imported, which turns on every library's INFO
    lines (httpx's request log in each Dask worker, for one); undo that on the root logger."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    from e3fp.fingerprint import fprinter

    root.setLevel(level)
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    return fprinter.Fingerprinter, fprinter.signed_to_unsigned_int


Fingerprinter, signed_to_unsigned_int = _import_e3fp()


def e3fp_atom_identifiers(mol_with_conformer: Chem.Mol, params: E3fpParams) -> np.ndarray:
    """int32 array [n_heavy_atoms, level + 1]; -1 where an atom has no shell at a level."""
    heavy = [a.GetIdx() for a in mol_with_conformer.GetAtoms() if a.GetAtomicNum() > 1]
    row_of = {atom: row for row, atom in enumerate(heavy)}
    out = np.full((len(heavy), params.level + 1), -1, dtype=np.int32)
    if not any(n.GetAtomicNum() > 1 for a in heavy for n in mol_with_conformer.GetAtomWithIdx(a).GetNeighbors()):
        return out  # only lone atoms: e3fp leaves out atoms without heavy neighbours, so no shells
    printer = fingerprinter(params)
    printer.run(conf=mol_with_conformer.GetConformer(), mol=mol_with_conformer)
    seen: set = set()
    for level in range(params.level + 1):
        shells = printer.level_shells.get(level)
        if shells is None:
            break
        for shell in shells - seen:
            identifier = int(signed_to_unsigned_int(np.array([shell.identifier]))[0])
            out[row_of[int(shell.center_atom)], level] = identifier % params.bits
        seen = set(shells)
    return out


def fingerprinter(params: E3fpParams) -> Fingerprinter:
    return Fingerprinter(
        bits=params.bits,
        level=params.level,
        radius_multiplier=params.radius_multiplier,
        stereo=params.stereo,
        remove_duplicate_substructs=True,
    )
