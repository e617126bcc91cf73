import io

import numpy as np
import pytest
import selfies as sf
from PIL import Image
from rdkit import Chem

from deepmolm.config import load_params
from deepmolm.data.featurize.conformer import make_conformer
from deepmolm.data.featurize.e3fp_tokens import e3fp_atom_identifiers, fingerprinter
from deepmolm.data.featurize.molecule import parse_molecule
from deepmolm.data.featurize.outcome import FeaturizeError
from deepmolm.data.featurize.properties import compute_properties
from deepmolm.data.featurize.record import FeaturizeRejection, featurize_row
from deepmolm.data.featurize.render import render_png
from deepmolm.data.featurize.selfies_tokens import selfies_with_atom_index
from deepmolm.data.sources.sdf import heavy_atom_coords
from tests.conftest import PARAMS

FEAT = load_params(PARAMS).featurize
STEROID = "C[C@]12CCC(=O)C=C1CC[C@@H]3[C@@H]2C(=O)C[C@]\\4([C@H]3CC/C4=C/C(=O)OC)C"


def cip_labels(mol):
    from rdkit.Chem import rdCIPLabeler

    rdCIPLabeler.AssignCIPLabels(mol)
    atoms = {a.GetIdx(): a.GetProp("_CIPCode") for a in mol.GetAtoms() if a.HasProp("_CIPCode")}
    bonds = sorted(b.GetProp("_CIPCode") for b in mol.GetBonds() if b.HasProp("_CIPCode"))
    return atoms, bonds


@pytest.mark.parametrize("smiles", [STEROID, "C/C=C\\C", "C/C=C/C", "N[C@@H](C)C(=O)O", "F[C@](Cl)(Br)I"])
def test_stereo_survives_canonicalisation(smiles):
    molecule = parse_molecule(smiles)
    source_atoms, source_bonds = cip_labels(Chem.MolFromSmiles(smiles))
    atoms, bonds = cip_labels(Chem.Mol(molecule.mol))
    assert source_atoms or source_bonds, "the input has stereo"
    assert {molecule.input_atom_of[i]: label for i, label in atoms.items()} == source_atoms, "R/S per atom"
    assert bonds == source_bonds, "E/Z of every stereo bond"
    assert Chem.MolToInchiKey(Chem.MolFromSmiles(smiles)) == molecule.inchikey


def test_input_atom_order_maps_canonical_atoms_back():
    molecule = parse_molecule("OCC")  # canonical CCO reverses the order
    source = Chem.MolFromSmiles("OCC")
    for i, atom in enumerate(molecule.mol.GetAtoms()):
        assert atom.GetSymbol() == source.GetAtomWithIdx(molecule.input_atom_of[i]).GetSymbol()


@pytest.mark.parametrize("smiles", [STEROID, "c1ccc2ccccc2c1", "OC(=O)C1CC1C(=O)O", "[2H]C([2H])=O", "[Na+].[O-]C(=O)C",
                                    "[2H]c1c([2H])c([2H])c(CC(N)C(=O)O)c([2H])c1[2H]", "[H+].[Na+].[O-]C(=O)C"])
def test_selfies_tokens_point_at_the_heavy_atoms_they_place(smiles):
    molecule = parse_molecule(smiles)
    selfies, index = selfies_with_atom_index(molecule.smiles, molecule.mol)
    tokens = list(sf.split_selfies(selfies))
    assert len(tokens) == len(index)
    heavy = [a for a in molecule.mol.GetAtoms() if a.GetAtomicNum() > 1]
    placed = [i for i in index if i >= 0]
    # indices count heavy atoms only (rows of coords and E3FP), even around explicit [2H] and [H+]
    assert sorted(placed) == list(range(len(heavy))), "every heavy atom is placed by exactly one token"
    for token, atom in zip(tokens, index):
        if atom >= 0:
            assert heavy[atom].GetSymbol().lower() in token.lower()
    assert Chem.MolToInchiKey(Chem.MolFromSmiles(sf.decoder(selfies))) == molecule.inchikey


def test_selfies_coverage_on_chebi20_test(shared):
    lines = (shared / "chebi20" / "test.txt").read_text().splitlines()[1:]
    ok = total = 0
    for line in lines:
        molecule = parse_molecule(line.split("\t")[1].replace("\\\\", "\\"))
        total += 1
        try:
            selfies_with_atom_index(molecule.smiles, molecule.mol)
            ok += 1
        except FeaturizeError:
            pass
    assert ok / total >= 0.995


def test_png_is_1024_rgb_and_deterministic():
    mol = parse_molecule(STEROID).mol
    first, second = render_png(mol, FEAT.render), render_png(Chem.Mol(mol), FEAT.render)
    assert first == second
    image = Image.open(io.BytesIO(first))
    assert (image.format, image.size, image.mode) == ("PNG", (1024, 1024), "RGB")
    assert render_png(parse_molecule("CCO").mol, FEAT.render) != first


@pytest.mark.parametrize("smiles", [STEROID, "CC(=O)OC(CC(=O)[O-])C[N+](C)(C)C", "C1CC1C#N", "CC(=O)[O-].[Na+]"])
def test_e3fp_identifiers_equal_the_e3fp_fingerprint(smiles):
    conformer = make_conformer(parse_molecule(smiles).mol, FEAT.conformer)
    array = e3fp_atom_identifiers(conformer.mol, FEAT.e3fp)
    assert array.shape == (conformer.mol.GetNumHeavyAtoms(), FEAT.e3fp.level + 1)
    assert array.dtype == np.int32 and ((array == -1) | ((array >= 0) & (array < FEAT.e3fp.bits))).all()
    printer = fingerprinter(FEAT.e3fp)
    printer.run(conf=conformer.mol.GetConformer(), mol=conformer.mol)
    reference = printer.get_fingerprint_at_level(FEAT.e3fp.level, bits=FEAT.e3fp.bits)
    assert {int(v) for v in array.ravel() if v >= 0} == {int(i) for i in reference.indices}
    assert (array[:, 0] >= 0).sum() == sum(1 for a in conformer.mol.GetAtoms() if a.GetAtomicNum() > 1 and
                                           any(n.GetAtomicNum() > 1 for n in a.GetNeighbors())), "level 0 for every bonded heavy atom"


def test_conformer_is_seeded_and_optimised():
    mol = parse_molecule(STEROID).mol
    a, b = make_conformer(mol, FEAT.conformer), make_conformer(mol, FEAT.conformer)
    assert a.source == "etkdg"
    np.testing.assert_array_equal(a.heavy_coords(), b.heavy_coords())
    assert make_conformer(mol, FEAT.conformer.model_copy(update={"method": "none"})).source == "none"


def test_the_embedding_budget_is_counted_not_timed(monkeypatch):
    """RDKit's `timeout` made a 135-atom glycolipid embed on one run and fail on another under load:
    the budget is a number of tries, so the same molecule gets the same conformer on any machine."""
    from deepmolm.data.featurize import conformer as conformer_module

    embed, seen = conformer_module.rdDistGeom.EmbedMolecule, []

    def spy(mol, settings):
        seen.append((settings.maxIterations, settings.timeout, settings.randomSeed))
        return embed(mol, settings)

    monkeypatch.setattr(conformer_module.rdDistGeom, "EmbedMolecule", spy)
    assert make_conformer(parse_molecule(STEROID).mol, FEAT.conformer).source == "etkdg"
    assert seen == [(FEAT.conformer.max_iterations, 0, FEAT.conformer.seed)]


@pytest.mark.parametrize("smiles", ["CC(=O)[O-].CC(=O)[O-].[Co+2]", "[OH-].[OH-].[Mg+2]", "CC[NH3+].C(=O)(C(F)(F)F)[O-]"])
def test_fragments_of_a_salt_do_not_overlap(smiles):
    conformer = make_conformer(parse_molecule(smiles).mol, FEAT.conformer)
    xyz = conformer.heavy_coords()
    distances = np.linalg.norm(xyz[:, None] - xyz[None], axis=-1)[np.triu_indices(len(xyz), 1)]
    assert distances.min() > 1.0, "ETKDG alone stacks the fragments on top of each other"


def test_large_molecules_start_from_random_coordinates():
    chain = parse_molecule("C" * 45).mol
    assert make_conformer(chain, FEAT.conformer).source == "etkdg_random_coords"
    assert make_conformer(parse_molecule("C" * 12).mol, FEAT.conformer).source == "etkdg"


def test_pubchem_coordinates_are_used_in_canonical_atom_order(shared):
    sdf = (shared / "pubchem" / "Conformer3D_COMPOUND_CID_1.sdf").read_text()
    raw_smiles = "CC(=O)OC(CC(=O)[O-])C[N+](C)(C)C"
    coords, status = heavy_atom_coords(sdf, raw_smiles)
    assert status == "pubchem_3d"
    record = featurize_row({"cid": 1, "source": "pubchem", "smiles": raw_smiles, "coords": coords}, FEAT)
    assert record["conformer_source"] == "pubchem"
    mol = Chem.MolFromSmiles(record["smiles"])
    xyz = np.array(record["coords"])
    lengths = [np.linalg.norm(xyz[b.GetBeginAtomIdx()] - xyz[b.GetEndAtomIdx()]) for b in mol.GetBonds()]
    assert 1.1 < min(lengths) and max(lengths) < 1.9, "coordinates follow the canonical atom order"
    assert sorted(map(tuple, np.round(xyz, 3))) == sorted(map(tuple, np.round(np.array(coords), 3)))


def test_properties_of_aspirin():
    props = compute_properties(parse_molecule("CC(=O)Oc1ccccc1C(=O)O").mol)
    assert props["mw"] == pytest.approx(180.159, abs=1e-3)
    assert props["exact_mass"] == pytest.approx(180.0423, abs=1e-4)
    assert props["tpsa"] == pytest.approx(63.6, abs=0.05)
    assert (props["heavy_atoms"], props["rings"], props["hbd"]) == (13, 1, 1)
    assert props["complexity"] > 0


def test_a_molecule_too_large_to_embed_gets_the_flat_depiction_so_its_atoms_still_count():
    """Without the fallback its E3FP was empty, so the model's size features read it as 0 atoms."""
    chain = {"cid": 1, "source": "test", "smiles": "C" * 300}
    assert make_conformer(parse_molecule(chain["smiles"]).mol, FEAT.conformer).source == "none"
    flat = featurize_row(chain, FEAT)
    assert flat["conformer_source"] == "depiction_2d" and "flat_conformer" in flat["flags"]
    assert "max_heavy_atoms" in flat["notes"]
    coords, e3fp = np.array(flat["coords"]), np.array(flat["e3fp"])
    assert coords.shape == (300, 3) and np.all(coords[:, 2] == 0.0)
    assert e3fp.shape == (300, FEAT.e3fp.level + 1) and (e3fp[:, 0] >= 0).all(), "every atom has its first shell"
    assert featurize_row(chain, FEAT) == flat, "the same coordinates every time"
    off = featurize_row(chain, FEAT.model_copy(update={"conformer": FEAT.conformer.model_copy(update={"flat_fallback": False})}))
    assert off["conformer_source"] == "none" and off["e3fp"] is None and "no_conformer" in off["flags"]
    switched_off = FEAT.model_copy(update={"conformer": FEAT.conformer.model_copy(update={"method": "none"})})
    assert featurize_row(chain, switched_off)["conformer_source"] == "none", "method none means no geometry at all"


PATHOLOGICAL = {
    "long chain, 300 heavy atoms": ("C" * 300, "depiction_2d"),
    "ferrocene": ("[CH-]1C=CC=C1.[CH-]1C=CC=C1.[Fe+2]", None),
    "cisplatin": ("N.N.Cl[Pt]Cl", None),
    "fullerene C60": ("c12c3c4c5c1c1c6c7c2c2c8c3c3c9c4c4c%10c5c5c1c1c6c6c%11c7c2c2c7c8c3c3c8c9c4c4c9c%10c5c5c1c1c6c6c%11c2c2c7c3c3c8c4c4c9c5c1c1c6c2c3c41", None),
    "methyl radical": ("[CH3]", None),
    "salt": ("[Na+].[Cl-]", None),
    "isotopes": ("[13CH4]", None),
    "heavy water": ("[2H]O[2H]", None),
    "lone ion": ("[Cl-]", None),
    "wildcard": ("*CC(=O)O", "wildcard_atom"),
    "un-kekulizable ring": ("c1cccc1", "kekulization_failed"),
    "pentavalent carbon": ("C(C)(C)(C)(C)C", "sanitization_failed"),
    "garbage": ("xyz(", "unparseable_smiles"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PATHOLOGICAL))
def test_pathological_molecules_are_accepted_or_rejected_never_raise(name):
    smiles, expected = PATHOLOGICAL[name]
    out = featurize_row({"cid": 1, "source": "test", "smiles": smiles}, FEAT)
    if isinstance(out, FeaturizeRejection):
        assert out.reason == expected, out.detail
        assert out.detail
    else:
        assert expected in (None, out["conformer_source"]), name
        n = out["properties"]["heavy_atoms"]
        if out["e3fp"] is not None:
            assert np.array(out["e3fp"]).shape == (n, FEAT.e3fp.level + 1)
            assert np.array(out["coords"]).shape == (n, 3)
        Image.open(io.BytesIO(out["image_png"])).verify()
