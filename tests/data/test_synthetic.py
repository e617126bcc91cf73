"""The scale corpus: seeded, valid, distinct molecules in ChEBI-20's layout that the ingest accepts."""

from __future__ import annotations

import pytest
from rdkit import Chem
from rdkit.Chem import Descriptors

from deepmolm.data.ingest import ingest_chebi20
from deepmolm.data.synthetic import CID_BASE, generate, read_parents, write_corpus


@pytest.fixture(scope="module")
def parents(shared):
    return read_parents(shared / "chebi20")[:200]


def test_the_same_seed_gives_the_same_molecules_and_another_seed_others(parents):
    first = list(generate(parents, 150, seed=3))
    assert first == list(generate(parents, 150, seed=3))
    assert [m.smiles for m in first] != [m.smiles for m in generate(parents, 150, seed=4)]
    assert [m.cid for m in first] == list(range(CID_BASE, CID_BASE + 150))


def test_every_molecule_is_valid_new_and_distinct_by_inchikey(parents):
    molecules = list(generate(parents, 300, seed=0, min_atoms=3, max_atoms=60))
    parent_keys = {Chem.MolToInchiKey(Chem.MolFromSmiles(s)) for _, s in parents}
    keys = []
    for m in molecules:
        mol = Chem.MolFromSmiles(m.smiles)
        assert mol is not None and 3 <= mol.GetNumHeavyAtoms() <= 60 and Descriptors.NumRadicalElectrons(mol) == 0
        assert Chem.MolToSmiles(mol) == m.smiles, "canonical SMILES"
        assert m.parent_cid in {cid for cid, _ in parents} and f"CID {m.parent_cid}" in m.description
        keys.append(Chem.MolToInchiKey(mol))
    assert len(set(keys)) == 300 and not set(keys) & parent_keys


def test_too_few_parents_for_the_count_is_an_error_not_a_hang():
    with pytest.raises(ValueError, match="only .* of 500 distinct molecules"):
        list(generate([(1, "CCO")], 500, seed=0, min_atoms=2, max_atoms=2))  # not 500 two-atom molecules
    with pytest.raises(ValueError, match="no parent"):
        list(generate([(1, "C1CC")], 5))  # an unclosed ring: RDKit parses nothing


def test_the_corpus_is_chebi20_layout_that_the_ingest_takes_whole(parents, tmp_path, make_params):
    counts = write_corpus(tmp_path / "corpus", generate(parents, 41, seed=1), 41)
    assert counts == {"validation": 21, "test": 20}
    lines = (tmp_path / "corpus" / "test.txt").read_text().splitlines()
    assert lines[0] == "CID\tSMILES\tdescription" and all(len(line.split("\t")) == 3 for line in lines)
    params = make_params(f"sources.chebi20.mirror={tmp_path / 'corpus'}", "sources.chebi20.sha256.validation=null",
                         "sources.chebi20.sha256.test=null")
    summary = ingest_chebi20(params, progress=False)
    assert (summary.input_rows, summary.accepted, summary.rejected) == (41, 41, 0)
