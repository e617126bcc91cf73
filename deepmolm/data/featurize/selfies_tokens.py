"""SELFIES of the canonical SMILES, with the heavy atom each SELFIES token places.

"Heavy atom i" means the i-th non-hydrogen atom in SMILES order, i.e. row i of the record's coords
and E3FP arrays. It differs from RDKit's atom index when the SMILES holds explicit hydrogens
([2H], [H+]): those are placed by a token too, which gets -1.

The SELFIES encoder walks the molecule depth-first from atom 0 in SMILES order and writes ring
closures as [Ring] tokens at the closing atom, as SMILES does; so the k-th atom-placing token places
atom k of the SMILES, which is atom k of RDKit's molecule of that SMILES. By the grammar, a
[Branch<n>] or [Ring<n>] token (with a bond prefix or not) and the n index tokens after it place no
atom, nor does [nop]; every other token places exactly one.
"""

from __future__ import annotations

import re

import selfies as sf
from rdkit import Chem

from deepmolm.data.featurize.outcome import FeaturizeError

_STRUCTURAL = re.compile(r"^\[(?:[=#/\\]|-[/\\]?|->)?(?:Branch|Ring)(\d)\]$")
_ATOM = re.compile(r"^\[[=#/\\]?(\d*)([A-Z][a-z]?|[a-z]{1,2})")


def selfies_with_atom_index(smiles: str, mol: Chem.Mol) -> tuple[str, list[int]]:
    """(SELFIES, heavy-atom index per SELFIES token, -1 where the token places no heavy atom)."""
    try:
        selfies = sf.encoder(smiles)
    except sf.EncoderError as exc:
        raise FeaturizeError("selfies_failed", str(exc).splitlines()[0][:300]) from None
    if not selfies:
        raise FeaturizeError("selfies_failed", "the SELFIES encoder returned nothing")
    heavy_ordinal = {a.GetIdx(): n for n, a in enumerate(a for a in mol.GetAtoms() if a.GetAtomicNum() > 1)}
    index: list[int] = []
    atom = 0
    skip = 0
    for token in sf.split_selfies(selfies):
        if skip:
            index.append(-1)
            skip -= 1
            continue
        structural = _STRUCTURAL.match(token)
        if structural or token in ("[nop]", "."):
            index.append(-1)
            skip = int(structural.group(1)) if structural else 0
            continue
        if atom >= mol.GetNumAtoms() or not _same_element(token, mol.GetAtomWithIdx(atom)):
            raise FeaturizeError("selfies_failed", f"SELFIES token {token} does not place atom {atom} of the SMILES")
        index.append(heavy_ordinal.get(atom, -1))
        atom += 1
    if atom != mol.GetNumAtoms():
        raise FeaturizeError("selfies_failed", f"SELFIES places {atom} atoms, the molecule has {mol.GetNumAtoms()}")
    return selfies, index


def _same_element(token: str, atom: Chem.Atom) -> bool:
    match = _ATOM.match(token)
    if not match:
        return False
    symbol = match.group(2)
    return symbol == atom.GetSymbol() or symbol == atom.GetSymbol().lower()
