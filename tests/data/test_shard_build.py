"""Shard versions built with the library steps (no scheduler): accounting, schema, cache reuse."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rdkit import Chem

from deepmolm.data.featurize.record import StepTimer, featurize_row
from deepmolm.data.featurize.sandbox import FeaturizeSandbox
from deepmolm.data.ingest import ingest_tsv
from deepmolm.data.shards.build import build_part, finish_version, plan_version
from deepmolm.data.shards.parts import SHARD_SCHEMA, read_manifest, read_shard_rejects, read_shards, resolve_version
from deepmolm.runtime.run_log import read_runs
from tests.featurize_inputs import BAD_ROWS, small_chebi20_rows, write_table


def build(params, raw_out, shards_root):
    started = time.perf_counter()
    plan = plan_version(raw_out, shards_root, params)
    return finish_version(plan, [build_part(plan, chunk) for chunk in plan.missing()], started)


@pytest.fixture
def params(make_params):
    return make_params("featurize.rows_per_part=5")


def test_version_accounts_for_every_row_with_reasons(params, shared, tmp_path):
    raw = ingest_tsv(params, write_table(tmp_path / "in.txt", small_chebi20_rows(shared, 12)), progress=False)
    summary = build(params, raw.out, tmp_path / "shards")
    assert (summary.input_rows, summary.accepted, summary.rejected) == (15, 12, 3)
    assert summary.rejected_by_reason == {reason: 1 for _, reason in BAD_ROWS.values()}
    assert summary.parts == 3
    manifest = read_manifest(summary.out)
    assert [p["rows"] + p["rejected"] for p in manifest["parts"]] == [5, 5, 5]
    assert manifest["params_hash"] and manifest["features_hash"] and manifest["schema_version"] == 1
    table = read_shards(summary.out)
    assert table.schema.equals(SHARD_SCHEMA, check_metadata=False) and table.num_rows == 12
    row = table.slice(0, 1).to_pylist()[0]
    image = Image.open(io.BytesIO(row["image_png"]))
    assert image.size == (1024, 1024) and image.mode == "RGB"
    heavy = Chem.MolFromSmiles(row["smiles"]).GetNumHeavyAtoms()
    assert np.array(row["coords"]).shape == (heavy, 3) and np.array(row["e3fp"]).shape == (heavy, 4)
    rejects = read_shard_rejects(summary.out).to_pylist()
    assert sorted(r["cid"] for r in rejects) == sorted(BAD_ROWS)
    assert all(r["stage"] == "featurize" and r["detail"] for r in rejects)


def test_refresh_reuses_unchanged_molecules_and_matches_a_clean_build(params, shared, tmp_path):
    first = small_chebi20_rows(shared, 10)
    raw1 = ingest_tsv(params, write_table(tmp_path / "v1.txt", first), progress=False)
    v1 = build(params, raw1.out, tmp_path / "shards")
    # The refresh: one description edited, four molecules added.
    cid, smiles, text = first[3].split("\t")
    grown = first[:3] + [f"{cid}\t{smiles}\t{text} (edited)"] + first[4:] + small_chebi20_rows(shared, 4, skip=10)
    raw2 = ingest_tsv(params, write_table(tmp_path / "v2.txt", grown), progress=False)
    v2 = build(params, raw2.out, tmp_path / "shards")
    assert v2.version != v1.version
    assert v2.reused == 9 + len(BAD_ROWS), "unchanged molecules and rejects come from the earlier version"
    assert read_runs(params.paths.logs_dir, "featurize")[-1]["reused"] == v2.reused, "the run log says what was reused"
    assert "reused" not in read_manifest(v2.out)["counts"], "the version itself does not depend on what came before"
    clean = build(params, raw2.out, tmp_path / "clean")
    assert clean.reused == 0 and clean.version == v2.version
    assert [p["sha256"] for p in read_manifest(clean.out)["parts"]] == [p["sha256"] for p in read_manifest(v2.out)["parts"]]
    # Other featurization params: nothing can be reused.
    other = build(params.model_copy(update={"featurize": params.featurize.model_copy(
        update={"e3fp": params.featurize.e3fp.model_copy(update={"bits": 1024})})}), raw2.out, tmp_path / "shards")
    assert other.reused == 0 and other.version != v2.version


def test_published_version_is_not_built_again(params, shared, tmp_path):
    raw = ingest_tsv(params, write_table(tmp_path / "in.txt", small_chebi20_rows(shared, 3), bad=False), progress=False)
    first = build(params, raw.out, tmp_path / "shards")
    plan = plan_version(raw.out, tmp_path / "shards", params)
    assert plan.published and plan.missing() == []
    again = finish_version(plan, [], time.perf_counter())
    assert (again.version, again.accepted) == (first.version, 3)


def test_a_dataset_directory_resolves_to_the_version_the_last_run_produced(params, shared, tmp_path):
    raw = ingest_tsv(params, write_table(tmp_path / "in.txt", small_chebi20_rows(shared, 2), bad=False), progress=False)
    first = build(params, raw.out, tmp_path / "shards")
    other = build(params.model_copy(update={"featurize": params.featurize.model_copy(update={"rows_per_part": 1})}),
                  raw.out, tmp_path / "shards")
    dataset = tmp_path / "shards" / "tsv"
    assert first.version != other.version and resolve_version(dataset) == Path(other.out)
    back = build(params, raw.out, tmp_path / "shards")  # published already: nothing built, but it is current again
    assert back.version == first.version and resolve_version(dataset) == Path(first.out)


def test_sandbox_gives_up_the_conformer_at_the_time_limit_and_keeps_working(make_params):
    glycan = ("CC(=O)N[C@@H]1[C@@H](O)[C@H](O[C@@H]2O[C@H](CO)[C@@H](O)[C@H](O)[C@H]2O)"
              "[C@@H](CO[C@@H]2O[C@H](CO)[C@@H](O)[C@H](O)[C@H]2NC(C)=O)O[C@H]1O")
    slow = {"cid": 1, "source": "tsv", "split": None, "smiles": ".".join([glycan] * 4), "description": "slow"}
    quick = {"cid": 2, "source": "tsv", "split": None, "smiles": "OC[C@H]1OC(O)[C@H](O)[C@@H](O)[C@@H]1O",
             "description": "glucose"}
    params = make_params("featurize.time_limit_s=0.5").featurize
    sandbox = FeaturizeSandbox()
    try:
        started = time.perf_counter()
        record = sandbox(slow, params)
        assert time.perf_counter() - started < 5.0
        assert record["conformer_source"] == "depiction_2d" and record["coords"] is not None
        assert "flat_conformer" in record["flags"] and "time_limit" in record["notes"]
        assert record["image_png"] and record["inchikey"], "the rest of the record is still there"
        timer = StepTimer()
        again = sandbox(quick, params.model_copy(update={"time_limit_s": 30}), timer)
        assert again == featurize_row(quick, params), "the helper gives what an in-process call gives"
        assert again["conformer_source"] == "etkdg" and timer.seconds["conformer"] > 0
        assert sandbox.restarts == 2
    finally:
        sandbox.stop()


def test_parts_are_planned_longest_first_and_all_covered(params, shared, tmp_path):
    lines = small_chebi20_rows(shared, 12, max_smiles=200)
    raw = ingest_tsv(params, write_table(tmp_path / "in.txt", lines), progress=False)
    plan = plan_version(raw.out, tmp_path / "shards", params)
    costs = [c.cost for c in plan.missing()]
    assert costs == sorted(costs, reverse=True) and len(set(costs)) > 1
    assert sorted((c.start, c.stop) for c in plan.missing()) == [(0, 5), (5, 10), (10, 15)]


def test_a_new_featurizer_version_neither_reuses_nor_overwrites_old_output(params, shared, tmp_path, monkeypatch):
    import deepmolm.data.shards.build as shard_build

    raw = ingest_tsv(params, write_table(tmp_path / "in.txt", small_chebi20_rows(shared, 3), bad=False), progress=False)
    old = build(params, raw.out, tmp_path / "shards")
    monkeypatch.setattr(shard_build, "FEATURIZER_VERSION", shard_build.FEATURIZER_VERSION + 1)
    new = build(params, raw.out, tmp_path / "shards")
    assert new.version != old.version and new.reused == 0
    assert read_manifest(new.out)["featurizer_version"] == shard_build.FEATURIZER_VERSION
    assert (tmp_path / "shards" / "tsv" / old.version).is_dir(), "the old version is kept"


def test_a_refresh_featurizes_parts_with_new_rows_and_copies_the_others_in_groups(params, shared, tmp_path, monkeypatch):
    """And the SFP table's parts go to the scheduler a few per call."""
    import deepmolm.data.shards.build as shard_build

    first = small_chebi20_rows(shared, 10)
    shard_build.build_version(ingest_tsv(params, write_table(tmp_path / "v1.txt", first), progress=False).out,
                              tmp_path / "shards", params)
    raw2 = ingest_tsv(params, write_table(tmp_path / "v2.txt", first + small_chebi20_rows(shared, 4, skip=10)),
                      progress=False)
    calls, sfp_calls = [], []

    def recording(name, fn, arguments):
        if name == "featurize-parts":
            calls.extend([chunk.index for chunk in chunks] for _, chunks in arguments)
        else:
            sfp_calls.extend(list(parts) for _, parts in arguments)
        return shard_build.in_process(name, fn, arguments)

    monkeypatch.setattr(shard_build, "COPIES_PER_CALL", 2)
    monkeypatch.setattr(shard_build, "SFP_PARTS_PER_CALL", 3)
    v2, sfp = shard_build.build_version(raw2.out, tmp_path / "shards", params, run=recording)
    assert sfp_calls == [[f"part-0000{i}.parquet" for i in range(3)], ["part-00003.parquet"]]
    assert sfp["molecules"] == 14
    # 17 rows in parts of 5: rows 10-14 hold the new molecules; parts 0, 1 and 3 are all in version 1
    assert calls == [[2], [0, 1], [3]] and v2.reused == 10 + len(BAD_ROWS)
    clean, _ = shard_build.build_version(raw2.out, tmp_path / "clean", params)
    assert [p["sha256"] for p in read_manifest(clean.out)["parts"]] == [p["sha256"] for p in read_manifest(v2.out)["parts"]]


def test_a_part_with_exactly_an_earlier_parts_rows_is_copied_byte_for_byte(params, shared, tmp_path, monkeypatch):
    """An append-only refresh leaves the old parts' row sets intact: they are file copies (no decoding,
    no re-encoding), and the version is the same bytes as a clean build."""
    import deepmolm.data.shards.build as shard_build

    first = small_chebi20_rows(shared, 10)  # parts of 5: two full parts
    v1 = build(params, ingest_tsv(params, write_table(tmp_path / "v1.txt", first, bad=False), progress=False).out,
               tmp_path / "shards")
    grown = first + small_chebi20_rows(shared, 3, skip=10)
    edited = first[:7] + [first[7] + " (edited)"] + first[8:] + small_chebi20_rows(shared, 3, skip=10)
    copied = []
    real_copy = shard_build.copy_part
    monkeypatch.setattr(shard_build, "copy_part", lambda building, index, source: copied.append((index, Path(source).name))
                        or real_copy(building, index, source))
    for name, lines, expected in (("grown", grown, [(0, "part-00000.parquet"), (1, "part-00001.parquet")]),
                                  ("edited", edited, [(0, "part-00000.parquet"), (2, "part-00002.parquet")])):
        copied.clear()
        raw = ingest_tsv(params, write_table(tmp_path / f"{name}.txt", lines, bad=False), progress=False)
        refreshed = build(params, raw.out, tmp_path / "shards")
        # in the second refresh part 1 holds the edited row (built, not copied); part 2 is the first refresh's
        assert sorted(copied) == expected
        clean = build(params, raw.out, tmp_path / f"clean-{name}")
        assert [p["sha256"] for p in read_manifest(refreshed.out)["parts"]] == \
            [p["sha256"] for p in read_manifest(clean.out)["parts"]]
        assert read_manifest(refreshed.out)["counts"] == read_manifest(clean.out)["counts"]
    assert read_manifest(v1.out)["parts"][0]["sha256"] == read_manifest(refreshed.out)["parts"][0]["sha256"]
