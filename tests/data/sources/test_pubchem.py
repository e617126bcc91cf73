"""The PubChem client against a real HTTP server on loopback that speaks PUG-REST and injects faults."""

import itertools
import json

import numpy as np
import pytest
from rdkit import Chem

from deepmolm.data.ingest import ingest_pubchem
from deepmolm.data.sources.errors import BatchFetchError
from deepmolm.data.sources.http import parse_retry_after
from deepmolm.data.sources.raw_table import read_raw_table, read_rejects
from tests.loopback import PubChemServer, compound_from_sdf, compound_from_smiles

pytestmark = pytest.mark.network

REAL = (1, 49852400)


@pytest.fixture(scope="module")
def compounds(shared):
    real = [compound_from_sdf(shared / "pubchem" / f"Conformer3D_COMPOUND_CID_{cid}.sdf") for cid in REAL]
    lines = (shared / "chebi20" / "test.txt").read_text().splitlines()[1:121]
    others = [compound_from_smiles(int(c), s.replace("\\\\", "\\"), d) for c, s, d in (line.split("\t") for line in lines)]
    return real + others


@pytest.fixture
def server(compounds):
    with PubChemServer(compounds, stall_s=1.5) as srv:
        yield srv


@pytest.fixture
def pubchem_params(make_params, server):
    def make(*overrides):
        return make_params(
            f"sources.pubchem.base_url={server.url}/rest",
            "sources.pubchem.timeout_s=0.5",
            "sources.pubchem.max_attempts=4",
            "sources.pubchem.backoff_initial_s=0.05",
            "sources.pubchem.backoff_max_s=0.2",
            *overrides,
        )

    return make


def tokens(cids):
    return [(str(c), None) for c in cids]


def test_fetches_properties_descriptions_and_aligned_3d_coordinates(pubchem_params, server, compounds):
    cids = [c.cid for c in compounds]
    summary = ingest_pubchem(pubchem_params(), tokens(cids + [999999999]), progress=False)
    assert summary.input_rows == len(cids) + 1
    assert (summary.accepted, summary.rejected_by_reason) == (len(cids), {"not_found": 1})
    # 122 CIDs -> 2 property batches of at most 100 each (fetched concurrently, so in either order).
    sizes = [len(p.split("/cid/")[1].split("/")[0].split(",")) for _, p in server.requests_to("property")]
    assert sorted(sizes) == [23, 100]

    rows = {r["cid"]: r for r in read_raw_table(summary.out).to_pylist()}
    assert list(rows) == cids, "rows keep the input order"
    one = rows[1]
    assert one["pubchem"]["mw"] == pytest.approx(compounds[0].mw, abs=0.01)
    assert isinstance(one["pubchem"]["hbd"], int)
    assert one["coords_status"] == "pubchem_3d" and one["conformer_sdf"].startswith("1\n")
    for cid in REAL:
        mol = Chem.MolFromSmiles(rows[cid]["smiles"])
        coords = np.array(rows[cid]["coords"])
        assert coords.shape == (mol.GetNumAtoms(), 3)
        # Aligned to the SMILES atom order: every SMILES bond is a real bond length in the conformer.
        lengths = [np.linalg.norm(coords[b.GetBeginAtomIdx()] - coords[b.GetEndAtomIdx()]) for b in mol.GetBonds()]
        assert 1.1 < min(lengths) and max(lengths) < 1.9
    other = rows[compounds[2].cid]
    assert other["coords"] is None and other["coords_status"] == "no_3d_record"
    assert other["description_source"] == "ChEBI", "the preferred description source wins"
    assert other["description"].startswith("The molecule is")


@pytest.mark.parametrize("fault", ["503", "504", "stall", "malformed", "truncated"])
def test_transient_faults_are_retried(pubchem_params, server, fault):
    server.faults["property"].extend([fault, fault])
    summary = ingest_pubchem(pubchem_params(), tokens(REAL), progress=False)
    assert summary.accepted == 2
    assert len(server.requests_to("property")) == 3


def test_cut_off_sdf_is_retried(pubchem_params, server):
    server.faults["sdf"].append("cut_sdf")
    summary = ingest_pubchem(pubchem_params(), tokens(REAL), progress=False)
    rows = read_raw_table(summary.out).to_pylist()
    assert [r["coords_status"] for r in rows] == ["pubchem_3d", "pubchem_3d"]
    assert len(server.requests_to("sdf")) == 2


def test_429_honours_retry_after(pubchem_params, server):
    server.faults["property"].append("429")
    ingest_pubchem(pubchem_params(), tokens(REAL), progress=False)
    (first, _), (second, _) = server.requests_to("property")
    assert second - first >= 0.95, "the client waited the Retry-After: 1 the server asked for"


@pytest.mark.parametrize(("fault", "reason"), [("404", "not_found"), ("400", "bad_request")])
def test_400_and_404_are_not_retried_and_become_rejects(pubchem_params, server, fault, reason):
    server.faults["property"].append(fault)
    summary = ingest_pubchem(pubchem_params(), tokens(REAL), progress=False)
    assert summary.rejected_by_reason == {reason: 2}
    assert len(server.requests_to("property")) == 1


def test_a_batch_that_keeps_failing_writes_nothing_and_names_its_cids(pubchem_params, server, compounds):
    server.always["description"] = "503"
    params = pubchem_params("sources.pubchem.batch_size=50", "sources.pubchem.max_attempts=3")
    cids = [c.cid for c in compounds[:60]]
    with pytest.raises(BatchFetchError) as err:
        ingest_pubchem(params, tokens(cids), progress=False)
    assert err.value.cids in (cids[:50], cids[50:])
    assert str(cids[0]) in str(err.value) or str(cids[50]) in str(err.value)
    assert not any((params.paths.raw_dir / "pubchem").iterdir()), "no snapshot, no staging left behind"
    assert len(server.requests_to("description")) >= 3


def test_failed_batches_can_become_rejects_instead(pubchem_params, server, compounds):
    server.faults["property"].extend(["503"] * 3)  # the first batch's attempts all fail
    params = pubchem_params(
        "sources.pubchem.batch_size=2", "sources.pubchem.max_attempts=3",
        "sources.pubchem.concurrency=1", "sources.pubchem.on_batch_failure=reject",
    )
    cids = [c.cid for c in compounds[:4]]
    summary = ingest_pubchem(params, tokens(cids), progress=False)
    assert (summary.accepted, summary.rejected_by_reason) == (2, {"fetch_failed": 2})
    failed = read_rejects(summary.out).to_pylist()
    assert sorted(int(r["raw_id"]) for r in failed) == sorted(cids[:2])
    assert "503" in failed[0]["detail"]


def test_global_rate_limit_holds_across_threads(pubchem_params, server, compounds):
    params = pubchem_params(
        "sources.pubchem.batch_size=1", "sources.pubchem.concurrency=4",
        "sources.pubchem.fetch_descriptions=false", "sources.pubchem.fetch_conformers=false",
    )
    ingest_pubchem(params, tokens([c.cid for c in compounds[:16]]), progress=False)
    times = sorted(t for t, _ in server.requests)
    assert len(times) == 16
    for i, j in itertools.combinations(range(len(times)), 2):
        if j - i >= 5:
            assert times[j] - times[i] >= 0.95, "more than 5 requests within one second"


def test_bad_cid_tokens_are_rejected_before_any_request(pubchem_params, server):
    summary = ingest_pubchem(pubchem_params(), [("1", 1), ("abc", 2), ("-4", 3), ("", 4), ("1", 5)], progress=False)
    assert summary.rejected_by_reason == {"duplicate_cid": 1, "empty_line": 1, "negative_cid": 1, "non_numeric_cid": 1}
    assert summary.accepted == 1
    assert all("/cid/1/" in p for _, p in server.requests)


def test_retry_after_accepts_seconds_and_http_dates():
    import datetime as dt

    now = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_cli_reads_a_cid_file_and_reports_a_failed_batch(server, tmp_path):
    from tests.conftest import run_cli, tmp_overrides

    cid_file = tmp_path / "cids.txt"
    cid_file.write_text("cid\n1\n\n49852400,extra column\n")
    sets = [x for o in tmp_overrides(tmp_path) for x in ("-S", o)]
    sets += ["-S", f"sources.pubchem.base_url={server.url}/rest", "-S", "sources.pubchem.max_attempts=2",
             "-S", "sources.pubchem.backoff_initial_s=0.05"]
    ok = run_cli("data", "ingest", "--source", "pubchem", "--cid-file", str(cid_file), "--json", "--quiet", *sets)
    assert ok.returncode == 0, ok.stderr
    summary = json.loads(ok.stdout.splitlines()[-1])
    assert (summary["input_rows"], summary["accepted"]) == (4, 2)
    assert summary["rejected_by_reason"] == {"empty_line": 1, "non_numeric_cid": 1}

    server.always["property"] = "503"
    failed = run_cli("data", "ingest", "--source", "pubchem", "--cids", "1, 49852400", "--json", "--quiet", *sets)
    assert failed.returncode == 1
    assert "CIDs: 1, 49852400" in failed.stderr
    assert json.loads(failed.stdout.splitlines()[-1])["success"] is False
    source_dir = tmp_path / "raw" / "pubchem"
    assert [p.name for p in source_dir.iterdir() if p.is_dir()] == [summary["snapshot"]], "the failed batch wrote nothing"
    assert (source_dir / "LATEST").read_text().strip() == summary["snapshot"], "the good snapshot is still the current one"
