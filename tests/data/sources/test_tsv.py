from collections import Counter

import pyarrow.parquet as pq
import pytest

from deepmolm.data.ingest import ingest_tsv
from deepmolm.data.sources.errors import LayoutError
from deepmolm.data.sources.raw_table import read_manifest, read_raw_table, read_rejects
from deepmolm.data.sources.tsv import count_rows
from tests.data.sources import broken_rows


@pytest.fixture
def broken_file(tmp_path):
    path = tmp_path / "broken.tsv"
    broken_rows.write(path)
    return path


def test_every_broken_row_is_accounted_for_with_its_reason(make_params, broken_file):
    summary = ingest_tsv(make_params(), broken_file, split="test", progress=False)
    expected = [reason for _, reason in broken_rows.ROWS]
    assert count_rows(broken_file) == len(expected)
    assert summary.input_rows == len(expected)
    assert summary.accepted + summary.rejected == summary.input_rows
    assert summary.accepted == expected.count(None)
    assert summary.rejected_by_reason == dict(Counter(r for r in expected if r))

    rejects = read_rejects(summary.out).to_pylist()
    by_line = {r["source_line"]: r["reason"] for r in rejects}
    for offset, (_, reason) in enumerate(broken_rows.ROWS):
        line = offset + 2  # line 1 is the header
        assert by_line.get(line) == reason, f"line {line}"
    assert all(r["detail"] for r in rejects)
    assert max(len(r["raw_smiles"] or "") for r in rejects) < 1000, "huge raw text is cut in rejects"


def test_accepted_rows_keep_text_and_provenance(make_params, broken_file):
    summary = ingest_tsv(make_params(), broken_file, split="test", progress=False)
    rows = {r["cid"]: r for r in read_raw_table(summary.out).to_pylist()}
    assert sorted(rows) == [101, 112, 113, 114, 115]
    assert rows[101]["smiles"] == "CC(=O)O", "the first row of a duplicated CID is kept"
    assert rows[113]["smiles"] == "C/C=C\\C", "doubled backslashes are undone"
    assert "\u2028" in rows[112]["description"] and "𝔘𝔫𝔦𝔠𝔬𝔡𝔢" in rows[112]["description"]
    assert rows[114]["source_line"] == 26 and rows[114]["split"] == "test"
    assert rows[114]["source_uri"] == broken_file.resolve().as_uri()
    manifest = read_manifest(summary.out)
    assert rows[114]["source_sha256"] == manifest["inputs"][0]["sha256"]
    assert manifest["counts"] == {"input_rows": 26, "accepted": 5, "rejected": 21}
    for part in manifest["parts"]:
        assert pq.read_metadata(f"{summary.out}/{part['path']}").num_rows == part["rows"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file"),
        (b"SMILES\tCID\tdescription\nCCO\t1\tx\n", "wrong layout"),
        (b"id,smiles,text\n1,CCO,x\n", "wrong layout"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "not UTF-8; is this a text file"),
    ],
)
def test_unusable_files_fail_with_a_clear_message_and_write_nothing(make_params, tmp_path, content, message):
    path = tmp_path / "input.tsv"
    path.write_bytes(content)
    params = make_params()
    with pytest.raises(LayoutError, match=message):
        ingest_tsv(params, path, progress=False)
    assert not any((params.paths.raw_dir / "tsv").glob("*")), "no snapshot or staging dir may remain"


def test_missing_file(make_params, tmp_path):
    with pytest.raises(LayoutError, match="no such file"):
        ingest_tsv(make_params(), tmp_path / "absent.tsv", progress=False)


def test_same_input_gives_the_same_snapshot_and_bytes(make_params, broken_file, tmp_path):
    first = ingest_tsv(make_params(), broken_file, progress=False)
    second = ingest_tsv(make_params(), broken_file, out_root=tmp_path / "elsewhere", progress=False)
    assert first.snapshot == second.snapshot
    m1, m2 = read_manifest(first.out), read_manifest(second.out)
    assert [p["sha256"] for p in m1["parts"]] == [p["sha256"] for p in m2["parts"]]
    assert m1["rejects"]["sha256"] == m2["rejects"]["sha256"]


def test_small_parts(make_params, broken_file):
    summary = ingest_tsv(make_params("ingest.rows_per_part=2"), broken_file, progress=False)
    manifest = read_manifest(summary.out)
    assert [p["rows"] for p in manifest["parts"]] == [2, 2, 1]
    assert read_raw_table(summary.out).num_rows == 5
