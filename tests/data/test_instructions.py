"""Instruction examples from a real shard version: accounting, determinism, image references."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from deepmolm.config import load_params
from deepmolm.data.contracts.gate import validate_instructions
from deepmolm.data.instructions import (
    EXAMPLES,
    INSTRUCTION_SCHEMA,
    build_instructions,
    read_instructions,
    resolve_instruction_set,
)
from deepmolm.data.shards.parts import read_manifest
from deepmolm.evaluation.properties import first_number
from deepmolm.store.files import sha256_file
from tests.conftest import PARAMS, run_cli, tmp_overrides


@pytest.fixture
def params(small_versions, tmp_path):
    return load_params(PARAMS, [*small_versions[2], *tmp_overrides(tmp_path)])


def test_every_molecule_gets_a_caption_and_each_property_question(small_versions, params, tmp_path):
    summary = build_instructions(small_versions[0], tmp_path / "out", params.instructions)
    assert summary["molecules"] == summary["molecules_with_examples"] == 10
    assert summary["examples_by_task"] == {"caption": 10, **{f"property_qa.{p}": 10 for p in ("complexity", "logp", "mw", "tpsa")}}
    table = read_instructions(summary["out"])
    assert table.schema.equals(INSTRUCTION_SCHEMA, check_metadata=False) and table.num_rows == 50
    rows = table.to_pylist()
    assert len({r["example_id"] for r in rows}) == 50
    for row in rows:
        if row["task"] == "property_qa":
            # the answer reads back, by the evaluation's own parser, as the number it was built from
            assert first_number(row["response"]) == pytest.approx(row["answer_value"])
            assert row["example_id"] == f"{row['cid']}-{row['property']}"
        else:
            assert row["response"] and row["answer_value"] is None


def test_image_reference_points_at_the_molecule(small_versions, params, tmp_path):
    summary = build_instructions(small_versions[0], tmp_path / "out", params.instructions)
    version = small_versions[0]
    for row in read_instructions(summary["out"]).to_pylist()[::7]:
        shard = pq.read_table(version / row["image_part"]).slice(row["image_row"], 1).to_pylist()[0]
        assert shard["cid"] == row["cid"] and shard["e3fp"] == row["e3fp"]
        assert Image.open(io.BytesIO(shard["image_png"])).size == (1024, 1024)
    assert read_manifest(version)["version"] == row["shard_version"]


def test_same_inputs_same_bytes_and_the_seed_changes_phrasings(small_versions, params, tmp_path):
    first = build_instructions(small_versions[0], tmp_path / "a", params.instructions)
    again = build_instructions(small_versions[0], tmp_path / "b", params.instructions)
    assert sha256_file(tmp_path / "a" / "tsv" / first["out"].split("/")[-1] / EXAMPLES) == \
        sha256_file(tmp_path / "b" / "tsv" / again["out"].split("/")[-1] / EXAMPLES)
    other = build_instructions(small_versions[0], tmp_path / "c",
                               params.instructions.model_copy(update={"seed": 7}))
    prompts = [r["prompt"] for r in read_instructions(first["out"]).to_pylist()]
    reseeded = [r["prompt"] for r in read_instructions(other["out"]).to_pylist()]
    assert other["out"] != first["out"] and prompts != reseeded
    assert len(set(prompts)) > 4, "phrasings vary across molecules"


def test_molecule_without_description_gets_property_questions_only(small_versions, params, tmp_path):
    from deepmolm.data.instructions import examples_for

    row = pq.read_table(small_versions[0] / "part-00000.parquet").slice(0, 1).to_pylist()[0]
    row["description"] = "  "
    tasks = [e["task"] for e in examples_for(row, params.instructions)]
    assert tasks == ["property_qa"] * 4


def test_output_passes_the_instruction_contract_and_the_cli_reports_it(small_versions, params, tmp_path):
    summary = build_instructions(small_versions[0], tmp_path / "out", params.instructions)
    assert validate_instructions(summary["out"], params).success
    result = run_cli("data", "instructions", "--shards", str(small_versions[0]), "--params", str(PARAMS),
                     *[a for o in tmp_overrides(tmp_path) for a in ("-S", o)], "--json")
    assert result.returncode == 0, result.stderr
    cli = json.loads(result.stdout.strip().splitlines()[-1])
    assert cli["examples"] == 50 and cli["contract"]["success"] is True and cli["contract"]["evaluated"] == 10


def test_a_directory_of_sets_resolves_to_the_one_the_last_build_produced(small_versions, params, tmp_path):
    first = build_instructions(small_versions[0], tmp_path / "out", params.instructions)["out"]
    other = params.instructions.model_copy(update={"seed": 1})
    second = build_instructions(small_versions[0], tmp_path / "out", other)["out"]
    sets = Path(first).parent
    assert first != second and resolve_instruction_set(sets) == Path(second)
    # going back to the first params reuses the first set, and it is the current one again
    assert build_instructions(small_versions[0], tmp_path / "out", params.instructions)["out"] == first
    assert resolve_instruction_set(sets) == Path(first)
    assert resolve_instruction_set(Path(second)) == Path(second), "a set directory is itself"


def test_a_set_built_from_a_relative_shard_path_points_at_its_shards_from_anywhere(small_versions, params, tmp_path,
                                                                                     monkeypatch):
    """The CLI without --prefect passes the path as typed: the manifest must still record it relative
    to the set, not to the directory the command ran in."""
    from deepmolm.data.instructions import instruction_shards

    monkeypatch.chdir(small_versions[0].parent)
    build_instructions(Path(small_versions[0].name), tmp_path / "out", params.instructions)
    monkeypatch.chdir(tmp_path)
    assert instruction_shards(resolve_instruction_set(tmp_path / "out" / "tsv")) == small_versions[0]


def test_a_large_set_is_written_a_row_group_at_a_time_with_the_same_rows(small_versions, params, tmp_path, monkeypatch):
    import deepmolm.data.instructions as instructions

    whole = read_instructions(build_instructions(small_versions[0], tmp_path / "whole", params.instructions)["out"])
    monkeypatch.setattr(instructions, "EXAMPLES_PER_GROUP", 7)
    summary = build_instructions(small_versions[0], tmp_path / "grouped", params.instructions)
    metadata = pq.read_metadata(Path(summary["out"]) / EXAMPLES)
    assert [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)] == [7] * 7 + [1]
    assert read_instructions(summary["out"]).equals(whole) and summary["examples"] == 50
