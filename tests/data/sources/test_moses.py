"""MOSES as a source: the first rows of the real file, every row accounted for, the evaluated
property sets' molecules kept out by InChIKey, and a file that is not MOSES's refused."""

import gzip
import json

import pytest

from deepmolm.data.ingest import ingest_moses, ingest_request
from deepmolm.data.property_sets import property_set_inchikeys, read_property_set
from deepmolm.data.sources.errors import ChecksumError, LayoutError, RequestError
from deepmolm.data.sources.raw_table import read_manifest, read_raw_table, read_rejects
from tests.conftest import run_cli


def _gzip_list(path, lines: list[bytes]):
    with gzip.open(path, "wb") as handle:
        handle.write(b"\n".join(lines) + b"\n")
    return path


def test_the_first_rows_of_the_real_file_leave_out_esol_and_freesolv_molecules(make_params, shared):
    summary = ingest_moses(make_params("sources.moses.max_rows=300"), progress=False)
    assert (summary.input_rows, summary.accepted + summary.rejected) == (300, 300)
    table, rejects = read_raw_table(summary.out), read_rejects(summary.out).to_pylist()
    assert table.column("cid").to_pylist() == [r for r in range(1, 301) if f"row {r}" not in {x["raw_id"] for x in rejects}]
    assert set(table.column("source").to_pylist()) == {"moses"} and set(table.column("split").to_pylist()) == {None}
    assert table.column("source_line").to_pylist()[0] == 2, "the header is line 1"
    # the file's own rows 8 and 15: two benzodiazepines ESOL measured
    assert [r["raw_id"] for r in rejects][:2] == ["row 8", "row 15"]
    assert {r["reason"] for r in rejects} == {"benchmark_molecule"} and "is esol molecule" in rejects[0]["detail"]
    evaluated = property_set_inchikeys(["esol", "freesolv"], shared / "moleculenet")
    assert not set(table.column("inchikey").to_pylist()) & set(evaluated)
    assert set(table.column("source_uri").to_pylist()) == {make_params().sources.moses.url}, "where it is published"
    manifest = read_manifest(summary.out)
    assert manifest["inputs"][0]["sha256"] == make_params().sources.moses.sha256
    assert manifest["inputs"][0]["extra"]["read_from"] == "../shared/data/moses/train.csv.gz", "relative, as given"
    assert manifest["inputs"][0]["rows"] == 300 and manifest["inputs"][0]["extra"]["excluded_molecules"] == len(evaluated)
    kept = ingest_moses(make_params("sources.moses.max_rows=300", "sources.moses.exclude_property_sets=[]"), progress=False)
    assert (kept.accepted, kept.rejected) == (300, 0), "without the exclusion every row of the six is kept"


def test_bad_rows_are_rejected_with_a_reason_and_a_molecule_twice_once(make_params, shared, tmp_path):
    esol = read_property_set("esol", shared / "moleculenet").smiles[0]
    rows = [b"SMILES", b"CCN(CC)C(=O)c1cccnc1Br", b"", b"C1CC", b"\xff\xfe", b"Brc1ncccc1C(=O)N(CC)CC", esol.encode(),
            b"c1ccccc1" * 40, b"CC1CCN(C)CC1C#N", b"CCCl"]  # row 5 is row 1 written another way
    path = _gzip_list(tmp_path / "small.csv.gz", rows)
    params = make_params(f"sources.moses.file={path}", "sources.moses.sha256=null", "sources.moses.max_rows=8",
                         "ingest.max_smiles_chars=200")
    summary = ingest_moses(params, progress=False)
    assert (summary.input_rows, summary.accepted, summary.rejected) == (8, 2, 6), "the ninth row is past max_rows"
    reasons = {r["raw_id"]: r["reason"] for r in read_rejects(summary.out).to_pylist()}
    assert reasons == {"row 2": "empty_line", "row 3": "unparseable_smiles", "row 4": "bad_encoding",
                       "row 5": "duplicate_molecule", "row 6": "benchmark_molecule", "row 7": "field_too_long"}
    assert read_raw_table(summary.out).column("cid").to_pylist() == [1, 8]


def test_a_file_that_is_not_mosess_is_refused_before_any_work(make_params, tmp_path):
    other = _gzip_list(tmp_path / "other.csv.gz", [b"smiles,target", b"CCO,1"])
    with pytest.raises(LayoutError, match="expected the header line 'SMILES'"):
        ingest_moses(make_params(f"sources.moses.file={other}", "sources.moses.sha256=null"), progress=False)
    plain = tmp_path / "plain.csv"
    plain.write_text("SMILES\nCC1CCN(C)CC1C#N\n")
    with pytest.raises(ChecksumError, match="not the known sum of MOSES"):
        ingest_moses(make_params(f"sources.moses.file={plain}"), progress=False)
    assert ingest_moses(make_params(f"sources.moses.file={plain}", "sources.moses.sha256=null"), progress=False).accepted == 1
    with pytest.raises(LayoutError, match="no such file"):
        ingest_moses(make_params(f"sources.moses.file={tmp_path / 'missing.csv.gz'}"), progress=False)
    with pytest.raises(RequestError, match="does not take --split"):
        ingest_request("moses", splits=["train"])


def test_the_cli_ingests_moses_and_names_a_bad_size(tmp_path):
    done = run_cli("data", "ingest", "--source", "moses", "--out", str(tmp_path), "-S", "sources.moses.max_rows=20", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.splitlines()[-1])
    assert (summary["source"], summary["input_rows"], summary["accepted"] + summary["rejected"]) == ("moses", 20, 20)
    bad = run_cli("data", "ingest", "--source", "moses", "-S", "sources.moses.max_rows=0")
    assert bad.returncode != 0 and "sources.moses.max_rows" in bad.stderr
