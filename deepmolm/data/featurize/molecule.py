"""Parse and sanitize a SMILES into the molecule every other featurizer reads."""

from __future__ import annotations

from dataclasses import dataclass, field

from rdkit import Chem, rdBase
from rdkit.Chem import Descriptors

from deepmolm.data.featurize.outcome import FeaturizeError


@dataclass(frozen=True)
class Molecule:
    mol: Chem.Mol  # sanitized, atoms in the order of `smiles`
    smiles: str  # RDKit canonical isomeric SMILES
    inchikey: str
    input_atom_of: tuple[int, ...]  # atom i here is atom input_atom_of[i] of the input SMILES
    flags: tuple[str, ...] = field(default=())


def parse_molecule(smiles: str) -> Molecule:
    """Canonical molecule of `smiles`, or FeaturizeError with a reason code.

    The returned mol is re-parsed from the canonical SMILES, so its atom indices follow the
    canonical SMILES: that is the atom order of every per-atom array downstream.
    """
    with rdBase.BlockLogs():
        raw = Chem.MolFromSmiles(smiles, sanitize=False)
    if raw is None:
        raise FeaturizeError("unparseable_smiles", "RDKit cannot parse the SMILES")
    if raw.GetNumAtoms() == 0:
        raise FeaturizeError("empty_molecule", "the SMILES has no atoms")
    if any(atom.GetAtomicNum() == 0 for atom in raw.GetAtoms()):
        raise FeaturizeError("wildcard_atom", "dummy or wildcard atoms (*) have no chemistry to featurize")
    problems = Chem.DetectChemistryProblems(raw)
    if problems:
        kinds = sorted({p.GetType() for p in problems})
        reason = "kekulization_failed" if any("Kekulize" in k for k in kinds) else "sanitization_failed"
        raise FeaturizeError(reason, "; ".join(p.Message() for p in problems)[:300])
    with rdBase.BlockLogs():
        sanitized = Chem.MolFromSmiles(smiles)
        canonical = Chem.MolToSmiles(sanitized)
        order = tuple(sanitized.GetPropsAsDict(True, True)["_smilesAtomOutputOrder"])
        mol = Chem.MolFromSmiles(canonical)
    if mol is None:
        raise FeaturizeError("sanitization_failed", "the canonical SMILES does not parse back")
    with rdBase.BlockLogs():
        inchikey = Chem.MolToInchiKey(mol)
    if not inchikey:
        raise FeaturizeError("inchi_failed", "RDKit could not compute an InChIKey")
    return Molecule(mol=mol, smiles=canonical, inchikey=inchikey, input_atom_of=order, flags=molecule_flags(mol))


def molecule_flags(mol: Chem.Mol) -> tuple[str, ...]:
    """Notable traits kept with the record (not reasons to reject)."""
    flags = []
    if len(Chem.GetMolFrags(mol)) > 1:
        flags.append("multi_fragment")
    if Descriptors.NumRadicalElectrons(mol) > 0:
        flags.append("radical")
    if any(atom.GetIsotope() for atom in mol.GetAtoms()):
        flags.append("isotope")
    if any(atom.GetFormalCharge() for atom in mol.GetAtoms()):
        flags.append("charged")
    if mol.GetNumAtoms() == 1:
        flags.append("single_atom")
    return tuple(flags)
