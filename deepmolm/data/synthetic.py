"""A large corpus of real, valid, distinct molecules in ChEBI-20's layout, for measuring scale.

Molecules come from seeded SELFIES mutations of the offline ChEBI-20 molecules (SELFIES decodes any
token string to a valid molecule), kept when RDKit parses them, they have between `min_atoms` and
`max_atoms` heavy atoms and no radical (a replaced token can leave an atom short of bonds), and
their InChIKey is new (to the parents and to each other). CIDs are
generated above `CID_BASE`, beyond PubChem's, and the descriptions are short templates: the corpus
is test data for the pipeline's throughput and memory, never a training source.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import selfies
from rdkit import Chem, RDLogger
from rdkit.Chem import Descriptors, rdMolDescriptors

CID_BASE = 2_000_000_000
HEADER = "CID\tSMILES\tdescription\n"


@dataclass(frozen=True)
class SyntheticMolecule:
    cid: int
    smiles: str
    description: str
    parent_cid: int


def read_parents(mirror: Path, splits: tuple[str, ...] = ("validation", "test")) -> list[tuple[int, str]]:
    """(cid, smiles) of the mirror's split files, in file order."""
    parents = []
    for split in splits:
        with open(Path(mirror) / f"{split}.txt", encoding="utf-8") as handle:
            next(handle)
            for line in handle:
                cid, smiles, _ = line.rstrip("\n").split("\t", 2)
                parents.append((int(cid), smiles))
    return parents


def _mutate(tokens: list[str], alphabet: list[str], rng: random.Random) -> list[str]:
    tokens = list(tokens)
    for _ in range(rng.randint(1, 3)):
        where = rng.randrange(len(tokens) + 1)
        kind = rng.random()
        if kind < 0.4 and where < len(tokens):
            tokens[where] = rng.choice(alphabet)
        elif kind < 0.75:
            tokens.insert(where, rng.choice(alphabet))
        elif len(tokens) > 2 and where < len(tokens):
            del tokens[where]
    return tokens


def _description(mol: Chem.Mol, parent_cid: int) -> str:
    formula = rdMolDescriptors.CalcMolFormula(mol)
    rings = rdMolDescriptors.CalcNumRings(mol)
    return (f"The molecule is a synthetic analogue of CID {parent_cid} with formula {formula}, "
            f"{mol.GetNumHeavyAtoms()} heavy atoms and {rings} ring{'s' if rings != 1 else ''}.")


def generate(parents: list[tuple[int, str]], count: int, *, seed: int = 0, min_atoms: int = 3,
             max_atoms: int = 60) -> Iterator[SyntheticMolecule]:
    """`count` new molecules, the same ones for the same parents and seed. Raises when the parents
    cannot yield that many (a mutation budget of 50 tries per molecule)."""
    RDLogger.DisableLog("rdApp.*")
    rng = random.Random(seed)
    alphabet = sorted(selfies.get_semantic_robust_alphabet())
    encoded, seen = [], set()
    for cid, smiles in parents:
        mol = Chem.MolFromSmiles(smiles)
        if mol is None:
            continue
        seen.add(Chem.MolToInchiKey(mol))
        try:
            encoded.append((cid, list(selfies.split_selfies(selfies.encoder(Chem.MolToSmiles(mol))))))
        except selfies.EncoderError:
            continue
    if not encoded:
        raise ValueError("no parent molecule could be written as SELFIES")
    made, tries = 0, 0
    while made < count:
        tries += 1
        if tries > 50 * count + 1000:
            raise ValueError(f"only {made} of {count} distinct molecules after {tries} mutations")
        parent_cid, tokens = encoded[rng.randrange(len(encoded))]
        mol = Chem.MolFromSmiles(selfies.decoder("".join(_mutate(tokens, alphabet, rng))) or "")
        if mol is None or not min_atoms <= mol.GetNumHeavyAtoms() <= max_atoms or Descriptors.NumRadicalElectrons(mol):
            continue
        key = Chem.MolToInchiKey(mol)
        if not key or key in seen:
            continue
        seen.add(key)
        yield SyntheticMolecule(CID_BASE + made, Chem.MolToSmiles(mol), _description(mol, parent_cid), parent_cid)
        made += 1


def write_corpus(out: Path, molecules: Iterator[SyntheticMolecule], count: int,
                 splits: tuple[str, ...] = ("validation", "test")) -> dict[str, int]:
    """The molecules as ChEBI-20 split files (`<split>.txt`, header, tab-separated), dealt to the
    splits in turn so each gets every n-th molecule; returns the rows per split."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    handles = {split: open(out / f"{split}.txt", "w", encoding="utf-8") for split in splits}
    counts = dict.fromkeys(splits, 0)
    try:
        for handle in handles.values():
            handle.write(HEADER)
        for index, molecule in enumerate(molecules):
            if index >= count:
                break
            split = splits[index % len(splits)]
            handles[split].write(f"{molecule.cid}\t{molecule.smiles}\t{molecule.description}\n")
            counts[split] += 1
    finally:
        for handle in handles.values():
            handle.close()
    return counts
