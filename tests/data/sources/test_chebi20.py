import hashlib
from pathlib import Path

import pytest

from deepmolm.data.ingest import ingest_chebi20
from deepmolm.data.sources.chebi20 import locate_split
from deepmolm.data.sources.errors import ChecksumError, LayoutError
from deepmolm.data.sources.raw_table import read_manifest, read_raw_table, resolve_snapshot
from tests.loopback import LoopbackServer, send, static_files


def test_mirror_splits_are_read_whole_with_splits_kept(make_params):
    summary = ingest_chebi20(make_params(), ["test", "validation"], progress=False)
    assert summary.input_rows == 3300 + 3301
    assert summary.accepted + summary.rejected == summary.input_rows
    assert summary.rejected == 0, "the published splits hold no bad row and no CID twice"
    table = read_raw_table(summary.out)
    splits = table.column("split").to_pylist()
    assert (splits.count("test"), splits.count("validation")) == (3300, 3301)
    assert table.column("cid").to_pylist()[:2] == [5354212, 53239731], "file order is kept"
    manifest = read_manifest(summary.out)
    assert {i["split"]: i["rows"] for i in manifest["inputs"]} == {"test": 3300, "validation": 3301}
    assert manifest["inputs"][0]["uri"].endswith("/ChEBI-20_data/test.txt")


def test_row_limit_reads_the_first_rows_of_each_split(make_params):
    summary = ingest_chebi20(make_params("sources.chebi20.max_rows_per_split=4"), progress=False)
    assert (summary.input_rows, summary.accepted) == (8, 8)
    table = read_raw_table(summary.out)
    assert table.column("source_line").to_pylist() == [2, 3, 4, 5] * 2, "the first rows after the header"
    assert {i["split"]: i["rows"] for i in read_manifest(summary.out)["inputs"]} == {"test": 4, "validation": 4}


def test_a_source_directory_resolves_to_the_snapshot_the_last_ingest_wrote(make_params):
    four = ingest_chebi20(make_params("sources.chebi20.max_rows_per_split=4"), progress=False).out
    five = ingest_chebi20(make_params("sources.chebi20.max_rows_per_split=5"), progress=False).out
    source_dir = Path(four).parent
    assert resolve_snapshot(source_dir) == Path(five)
    again = ingest_chebi20(make_params("sources.chebi20.max_rows_per_split=4"), progress=False).out
    assert again == four, "the same bytes are the same snapshot, kept as it was"
    assert resolve_snapshot(source_dir) == Path(four), "and it is the current one again"


def test_stereo_smiles_loses_its_doubled_backslashes(make_params):
    summary = ingest_chebi20(make_params(), ["test"], progress=False)
    table = read_raw_table(summary.out)
    smiles = {r["cid"]: r["smiles"] for r in table.select(["cid", "smiles"]).to_pylist()}
    assert not any("\\\\" in s for s in smiles.values())
    assert smiles[5354212] == "C[C@]12CCC(=O)C=C1CC[C@@H]3[C@@H]2C(=O)C[C@]\\4([C@H]3CC/C4=C/C(=O)OC)C"


def test_altered_mirror_file_is_refused(make_params, shared, tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    data = (shared / "chebi20" / "test.txt").read_bytes()
    (mirror / "test.txt").write_bytes(data.replace(b"steroid", b"sterol", 1))
    with pytest.raises(ChecksumError, match="does not match the known sum"):
        ingest_chebi20(make_params(f"sources.chebi20.mirror={mirror}"), ["test"], progress=False)
    with pytest.raises(LayoutError, match="has no validation.txt"):
        ingest_chebi20(make_params(f"sources.chebi20.mirror={mirror}"), ["validation"], progress=False)


@pytest.mark.network
def test_download_verifies_caches_and_reuses(make_params, shared):
    with LoopbackServer(static_files(shared / "chebi20")) as server:
        params = make_params("sources.chebi20.mirror=null", f"sources.chebi20.url={server.url}/{{split}}.txt")
        first = locate_split(params.sources.chebi20, "test", params.paths.cache_dir)
        assert first.origin == "download" and first.uri == f"{server.url}/test.txt"
        assert first.sha256 == params.sources.chebi20.sha256["test"]
        assert len(server.requests) == 1
        again = locate_split(params.sources.chebi20, "test", params.paths.cache_dir)
        assert again.path == first.path and len(server.requests) == 1, "a verified cache is reused"
        summary = ingest_chebi20(params, ["test"], progress=False)
        assert summary.input_rows == 3300


@pytest.mark.network
def test_download_with_wrong_bytes_fails_and_keeps_nothing(make_params, shared):
    tampered = (shared / "chebi20" / "test.txt").read_bytes()[:-100]
    with LoopbackServer(static_files(shared / "chebi20", {"test.txt": tampered})) as server:
        params = make_params("sources.chebi20.mirror=null", f"sources.chebi20.url={server.url}/{{split}}.txt")
        with pytest.raises(ChecksumError, match="does not match"):
            ingest_chebi20(params, ["test"], progress=False)
    assert not list((params.paths.cache_dir / "chebi20").glob("test.txt*"))


@pytest.mark.network
def test_unknown_sum_needs_trust_on_first_use_then_pins_it(make_params, tmp_path):
    files = tmp_path / "served"
    files.mkdir()
    body = b"CID\tSMILES\tdescription\n1\tCCO\tEthanol.\n"
    (files / "train.txt").write_bytes(body)
    with LoopbackServer(static_files(files)) as server:
        common = ("sources.chebi20.mirror=null", f"sources.chebi20.url={server.url}/{{split}}.txt")
        with pytest.raises(ChecksumError, match="trust_on_first_use"):
            ingest_chebi20(make_params(*common), ["train"], progress=False)
        assert server.requests == []
        params = make_params(*common, "sources.chebi20.trust_on_first_use=true")
        summary = ingest_chebi20(params, ["train"], progress=False)
        assert summary.accepted == 1
        pin = params.paths.cache_dir / "chebi20" / "train.txt.sha256"
        assert pin.read_text().strip() == hashlib.sha256(body).hexdigest()
        # The upstream file changes: the pinned sum now refuses it.
        (params.paths.cache_dir / "chebi20" / "train.txt").unlink()
        (files / "train.txt").write_bytes(body + b"2\tCCC\tPropane.\n")
        with pytest.raises(ChecksumError):
            ingest_chebi20(params, ["train"], progress=False)


@pytest.mark.network
def test_missing_remote_file_is_a_clear_error(make_params, tmp_path):
    with LoopbackServer(static_files(tmp_path)) as server:
        params = make_params("sources.chebi20.mirror=null", f"sources.chebi20.url={server.url}/{{split}}.txt")
        with pytest.raises(Exception, match="HTTP 404"):
            ingest_chebi20(params, ["test"], progress=False)


@pytest.mark.network
def test_download_retries_a_busy_server(make_params, shared):
    serve = static_files(shared / "chebi20")
    answers = iter(["busy"])

    def flaky(handler):
        if next(answers, None) == "busy":
            return send(handler, 503, b"busy", "text/plain", {"Retry-After": "0"})
        return serve(handler)

    with LoopbackServer(flaky) as server:
        params = make_params(
            "sources.chebi20.mirror=null", f"sources.chebi20.url={server.url}/{{split}}.txt",
            "sources.chebi20.backoff_initial_s=0.01",
        )
        located = locate_split(params.sources.chebi20, "test", params.paths.cache_dir)
        assert located.sha256 == params.sources.chebi20.sha256["test"]
        assert len(server.requests) == 2
