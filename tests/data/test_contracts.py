"""Data contracts on real shard versions: a valid one passes, each corruption fails by name."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from deepmolm.config import ConfigError, load_params
from deepmolm.data.contracts.gate import (
    TABLES,
    Chunks,
    ContractError,
    ContractRunner,
    load_suite,
    validate_shard_version,
)
from deepmolm.data.shards.parts import SHARD_SCHEMA, part_name, read_manifest
from deepmolm.data.shards.sfp_table import SFP_DIR, SFP_SCHEMA, write_sfp_part
from deepmolm.runtime.run_log import resolve_recorded
from deepmolm.store.files import sha256_file, write_parquet
from deepmolm.store.versions import MANIFEST
from tests.conftest import PARAMS, REPO, run_cli, tmp_overrides

SUITES = REPO / "data_contracts"


@pytest.fixture
def params(small_versions, tmp_path):
    return load_params(PARAMS, [*small_versions[2], f"paths.reports_dir={tmp_path / 'reports'}"])


@pytest.fixture
def version(small_versions, tmp_path) -> Path:
    """A private copy of the valid version, free to corrupt, and of its raw snapshot where the
    version's manifest points (relative to the version, as a clone has it)."""
    copy = Path(shutil.copytree(small_versions[0], tmp_path / "shards" / "tsv" / "version"))
    recorded = read_manifest(copy)["input"]["raw_snapshot_dir"]
    shutil.copytree(resolve_recorded(recorded, small_versions[0]), resolve_recorded(recorded, copy))
    return copy


def rewrite_part(version: Path, index: int, change) -> None:
    """Apply `change` to the rows of one part and record the new file in the manifest, as a
    consistent (but wrong) writer would: only the contract can catch what it did."""
    manifest = read_manifest(version)
    path = version / part_name(index)
    rows = pq.read_table(path, schema=SHARD_SCHEMA).to_pylist()
    change(rows)
    write_parquet(pa.Table.from_pylist(rows, schema=SHARD_SCHEMA), path)
    manifest["parts"][index]["sha256"] = sha256_file(path)
    (version / MANIFEST).write_text(json.dumps(manifest))
    write_sfp_part(version, part_name(index))  # and the graphs of the changed rows, as featurize would


def test_valid_version_passes_every_suite(version, params):
    result = validate_shard_version(version, params)
    assert result.success, result.failed
    assert result.failed == [] and result.warnings == []
    expected = sum(len(load_suite(SUITES, table)["expectations"]) for table in TABLES if table != "instruction_examples")
    assert result.evaluated == expected
    assert set(result.tables) == set(TABLES) - {"instruction_examples"}
    assert result.tables["molecule_shards"]["rows"] == 10 and result.tables["raw_table"]["rows"] == 10
    docs = Path(result.data_docs.removeprefix("file://"))
    assert docs.is_file() and docs.suffix == ".html", "Data Docs are built for the run"
    assert "molecule_shards" in docs.read_text()
    # a page per suite run (a chunked table's row checks are a suite of their own: `<table>.rows`)
    suites = {page.parent.parent.parent.relative_to(docs.parent / "validations").as_posix().replace("/", ".")
              for page in (docs.parent / "validations").rglob("*.html")}
    assert suites == {*result.tables, "molecule_shards.rows", "raw_table.rows", "sfp_graphs.rows"}, sorted(suites)


def test_a_molecule_neither_a_graph_nor_a_rejection_fails_the_sfp_contract(version, params, small_versions, tmp_path):
    path = version / SFP_DIR / part_name(0)
    rows = pq.read_table(path, schema=SFP_SCHEMA).to_pylist()
    rows[1]["atoms"] = rows[1]["atoms"][:-1]  # one node short of the molecule's heavy atoms
    write_parquet(pa.Table.from_pylist(rows[1:], schema=SFP_SCHEMA), path)  # and the first molecule lost
    result = validate_shard_version(version, params)
    assert set(result.failed) == {"sfp_graphs.each_molecule_a_graph_or_a_rejection", "sfp_graphs.one_node_per_heavy_atom"}
    shutil.rmtree(version / SFP_DIR)
    assert validate_shard_version(version, params).failed == ["sfp_graphs.table_present"]
    off = load_params(PARAMS, [*small_versions[2], f"paths.reports_dir={tmp_path / 'reports'}", "mumo.sfp=false"])
    assert "sfp_graphs" not in validate_shard_version(version, off).tables


def test_the_graphs_are_read_a_part_at_a_time_and_every_molecule_counted_once(version):
    """The SFP rows come in frames of about `rows` rows, one part's graphs read at a time (a 100,000-
    molecule table held whole took 1.7 GB); over all frames, each molecule once, a graph or a rejection."""
    from deepmolm.data.contracts.frames import sfp_frames
    from deepmolm.data.shards.parts import read_shards

    molecules = read_shards(version, columns=["cid", "smiles"])
    frames = list(sfp_frames(version, molecules, rows=2))
    whole = pd.concat(frames)
    assert len(frames) > 2 and sorted(whole["cid"]) == sorted(molecules.column("cid").to_pylist())
    assert whole["accounted"].all() and whole["atoms_match"].dropna().all()


def test_a_bad_png_fails_the_png_expectation(version, params):
    rewrite_part(version, 0, lambda rows: rows[1].update(image_png=b"\x89PNG but not really"))
    result = validate_shard_version(version, params)
    # the size and mode of an image that does not open are unknown, not wrong: one failure, by name
    assert not result.success and result.failed == ["molecule_shards.image_is_png"]


def test_a_small_png_fails_the_size_expectation(version, params):
    def shrink(rows):
        buffer = io.BytesIO()
        Image.new("RGB", (512, 512), "white").save(buffer, format="PNG")
        rows[0]["image_png"] = buffer.getvalue()

    rewrite_part(version, 1, shrink)
    result = validate_shard_version(version, params)
    assert result.failed == ["molecule_shards.image_width", "molecule_shards.image_height"]
    details = result.tables["molecule_shards"]["details"]["image_width"]
    assert details["unexpected_count"] == 1 and details["partial_unexpected_list"] == [512]


def test_an_out_of_range_e3fp_identifier_fails(version, params):
    bits = params.featurize.e3fp.bits

    def poke(rows):
        with_geometry = next(r for r in rows if r["e3fp"])
        with_geometry["e3fp"][0][2] = bits

    rewrite_part(version, 0, poke)
    result = validate_shard_version(version, params)
    assert result.failed == ["molecule_shards.e3fp_max_below_bits"]


def test_e3fp_rows_must_match_heavy_atoms(version, params):
    rewrite_part(version, 0, lambda rows: rows[0].update(e3fp=rows[0]["e3fp"][:-1]))
    assert validate_shard_version(version, params).failed == ["molecule_shards.e3fp_one_row_per_heavy_atom"]


def test_a_duplicate_cid_fails(version, params):
    def duplicate(rows):
        rows[1]["cid"] = rows[0]["cid"]

    rewrite_part(version, 0, duplicate)
    # the graphs are keyed by cid: two molecules under one cid cannot both be matched to theirs
    assert set(validate_shard_version(version, params).failed) == {
        "molecule_shards.cid_unique", "sfp_graphs.cid_unique", "sfp_graphs.one_node_per_heavy_atom"}


def test_a_part_whose_rows_disagree_with_the_manifest_fails(version, params):
    manifest = read_manifest(version)
    manifest["parts"][1]["rows"] += 1
    (version / MANIFEST).write_text(json.dumps(manifest))
    result = validate_shard_version(version, params)
    assert result.failed == ["shard_parts.rows_match_manifest"]
    assert result.tables["shard_parts"]["details"]["rows_match_manifest"]["unexpected_count"] == 1


def test_a_dropped_row_fails_the_manifest_counts(version, params):
    rewrite_part(version, 1, lambda rows: rows.pop())
    result = validate_shard_version(version, params)
    assert "molecule_shards.rows_match_manifest" in result.failed
    assert "shard_parts.rows_match_manifest" in result.failed


def test_a_selfies_of_another_molecule_fails_the_round_trip(version, params):
    def swap(rows):
        rows[0]["selfies"], rows[1]["selfies"] = rows[1]["selfies"], rows[0]["selfies"]

    rewrite_part(version, 0, swap)
    failed = validate_shard_version(version, params).failed
    assert "molecule_shards.selfies_decodes_to_same_inchikey" in failed


def test_a_warning_is_reported_and_does_not_fail(version, params):
    rewrite_part(version, 0, lambda rows: rows[0].update(split="holdout"))
    result = validate_shard_version(version, params)
    assert result.success and result.failed == []
    assert result.warnings == ["molecule_shards.split_known"]


def test_reject_rate_thresholds_come_from_params(small_versions, params, tmp_path):
    with_rejects = small_versions[1]  # 3 rejects of 13 input rows
    result = validate_shard_version(with_rejects, params)
    assert result.failed == ["reject_rates.reject_rate_under_threshold"]
    assert result.tables["reject_rates"]["details"]["reject_rate_under_threshold"]["unexpected_count"] >= 1
    lenient = load_params(PARAMS, [*small_versions[2], f"paths.reports_dir={tmp_path / 'r'}",
                                   'contracts.max_reject_rate={"*all*": 0.5, "*": 0.1}'])
    assert validate_shard_version(with_rejects, lenient).success


def test_an_unknown_reason_in_the_thresholds_is_a_config_error_naming_it():
    with pytest.raises(ConfigError, match="kekulisation_failed"):
        load_params(PARAMS, ['contracts.max_reject_rate={"kekulisation_failed": 0.1}'])


def test_a_suite_file_gx_would_drop_an_expectation_from_is_refused(params, tmp_path):
    suites = Path(shutil.copytree(SUITES, tmp_path / "suites"))
    suite = json.loads((suites / "shard_parts.json").read_text())
    suite["expectations"].append({"type": "expect_column_values_to_be_purple", "kwargs": {"column": "item"},
                                  "meta": {"name": "purple"}})
    (suites / "shard_parts.json").write_text(json.dumps(suite))
    runner = ContractRunner(tmp_path / "gx", suites)
    with pytest.raises(ContractError, match="refused 1 expectation"):
        runner.run({"shard_parts": pd.DataFrame({"item": ["x"]})}, {}, "test")
    suite["expectations"][-1] = {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "item"}}
    (suites / "shard_parts.json").write_text(json.dumps(suite))
    with pytest.raises(ContractError, match="has no meta.name"):
        load_suite(suites, "shard_parts")


def test_instruction_examples_suite_runs_on_a_frame(params, tmp_path):
    frame = pd.DataFrame({"example_id": ["a", "b", "b"], "cid": [1, 2, 3], "split": ["test"] * 3,
                          "task": ["caption", "property_qa", "translate"], "prompt": ["p", "p", "p"],
                          "response": ["r", "", "r"]})
    result = ContractRunner(tmp_path / "gx", SUITES).run({"instruction_examples": frame}, {}, "frame")
    assert result.failed == ["instruction_examples.example_id_unique", "instruction_examples.task_known",
                             "instruction_examples.response_non_empty"]


def test_a_table_checked_in_chunks_fails_as_the_whole_frame_does(tmp_path):
    """Row expectations chunk by chunk, uniqueness on the kept key column: a duplicate split over two
    chunks is still found, and the counts are the table's."""
    frame = pd.DataFrame({"example_id": ["a", "b", "c", "d", "a"], "cid": [1, 2, 3, 4, 5], "split": ["test"] * 5,
                          "task": ["caption", "translate", "caption", "translate", "caption"],
                          "prompt": ["p"] * 5, "response": ["r", "r", "", "r", "r"]})
    runner = ContractRunner(tmp_path / "gx", SUITES)
    whole = runner.run({"instruction_examples": frame}, {}, "frame")
    chunked = runner.run({"instruction_examples": Chunks(lambda: (frame.iloc[i:i + 2] for i in range(0, 5, 2)))}, {},
                         "chunks")
    assert chunked.failed == whole.failed == ["instruction_examples.example_id_unique", "instruction_examples.task_known",
                                              "instruction_examples.response_non_empty"]
    assert chunked.evaluated == whole.evaluated and chunked.tables["instruction_examples"]["rows"] == 5
    detail = chunked.tables["instruction_examples"]["details"]["task_known"]
    assert detail["unexpected_count"] == 2 and detail["chunks"] == 3, "counted over the chunks"
    repeated = chunked.tables["instruction_examples"]["details"]["example_id_unique"]
    assert repeated["partial_unexpected_list"] == ["a", "a"], "the ids themselves, not the hashes kept to compare them"
    clean = frame.assign(task="caption", response="r", example_id=list("abcde"))
    assert runner.run({"instruction_examples": Chunks(lambda: [clean.iloc[:3], clean.iloc[3:]])}, {}, "clean").success


def test_cli_validate_json_and_exit_codes(version, tmp_path):
    common = ["--params", str(PARAMS), *[a for o in tmp_overrides(tmp_path) for a in ("-S", o)],
              "-S", f"paths.reports_dir={tmp_path / 'reports'}", "--json"]
    ok = run_cli("data", "validate", "--shards", str(version), "--no-report", *common)
    summary = json.loads(ok.stdout.strip().splitlines()[-1])
    assert ok.returncode == 0, ok.stderr
    assert summary["success"] is True and summary["evaluated"] > 40 and summary["failed"] == []
    rewrite_part(version, 0, lambda rows: rows[1].update(cid=rows[0]["cid"]))
    bad = run_cli("data", "validate", "--shards", str(version), "--no-report", *common)
    assert bad.returncode == 1
    assert "molecule_shards.cid_unique" in json.loads(bad.stdout.strip().splitlines()[-1])["failed"]
    missing = run_cli("data", "validate", "--shards", str(tmp_path / "nowhere"), *common)
    assert missing.returncode == 1 and "nowhere" in missing.stderr
