"""Retrieval baseline on real shard versions."""

from __future__ import annotations

import dataclasses
import json

import pytest

from deepmolm.evaluation.baseline import Molecule, retrieve
from deepmolm.evaluation.predictions import read_predictions
from deepmolm.evaluation.shard_molecules import read_molecules
from tests.conftest import PARAMS, run_cli


def test_nearest_neighbour_description_never_itself(small_versions):
    molecules = read_molecules(small_versions[0])
    assert len(molecules) == 10 and all(m.description for m in molecules)
    twin = dataclasses.replace(molecules[0], cid=10**9, description="the twin's description")
    results, pool = retrieve(molecules[:3], [molecules, [twin]])
    assert pool == 11
    first, similarity = results[0]
    assert first.id == str(molecules[0].cid) and first.reference == molecules[0].description
    assert first.prediction == "the twin's description" and similarity == 1.0, "same structure, other CID"
    for prediction, similarity in results[1:]:
        assert prediction.prediction != prediction.reference and similarity < 1.0, "a query never retrieves itself"


def test_e3fp_similarity_also_ranks_an_identical_geometry_first(small_versions):
    molecules = read_molecules(small_versions[0])
    query = molecules[4]
    twin = Molecule(cid=10**9, smiles=query.smiles, description="twin", e3fp=query.e3fp)
    [(prediction, similarity)], _ = retrieve([query], [[*molecules, twin]], kind="e3fp")
    assert prediction.prediction == "twin" and similarity == 1.0


def test_a_pool_read_in_parts_retrieves_what_the_whole_pool_does(small_versions):
    """Streaming the pool part by part keeps the best match so far: the same answers, ties going to
    the lowest CID wherever the parts put them."""
    molecules = read_molecules(small_versions[0])
    twins = [dataclasses.replace(molecules[2], cid=cid, description=f"twin {cid}") for cid in (10**9 + 5, 10**9 + 1)]
    pool = [*molecules, *twins]
    whole, _ = retrieve(molecules, [pool])
    for size in (1, 3, 7):
        parts = [pool[i:i + size] for i in range(0, len(pool), size)]
        assert retrieve(molecules, parts) == retrieve(molecules, list(reversed(parts))) == (whole, len(pool))
    assert whole[2][0].prediction == f"twin {10**9 + 1}", "of two identical twins, the lower CID"
    with pytest.raises(ValueError, match="pool is empty"):
        retrieve(molecules, [[], []])


def test_cli_baseline_writes_a_prediction_file_the_metrics_read(small_versions, tmp_path):
    out = tmp_path / "baseline.jsonl"
    result = run_cli("eval", "baseline", "--train", str(small_versions[0]), "--test", str(small_versions[1]),
                     "--out", str(out), "--params", str(PARAMS), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["queries"] == 10 and summary["pool"] == 10 and summary["fingerprint"] == "morgan"
    predictions = read_predictions(out)
    assert len(predictions) == 10
    # the two versions hold the same 10 molecules, so no query may be answered from its own row
    assert all(p.prediction != p.reference for p in predictions)


def test_shard_molecules_are_read_a_part_at_a_time_and_the_cli_caps_its_queries(small_versions, tmp_path):
    everything = read_molecules(small_versions[0])
    chosen = {m.cid for m in everything[3:6]}
    light = read_molecules(small_versions[0], cids=chosen, e3fp=False)
    assert {m.cid for m in light} == chosen and all(m.e3fp is None and m.smiles for m in light)
    out = tmp_path / "capped.jsonl"
    result = run_cli("eval", "baseline", "--train", str(small_versions[0]), "--test", str(small_versions[1]),
                     "--out", str(out), "--max-queries", "4", "--params", str(PARAMS), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["queries"] == 4
    lowest = sorted(m.cid for m in read_molecules(small_versions[1]))[:4]
    assert [int(p.id) for p in read_predictions(out)] == lowest, "the first queries by CID"
