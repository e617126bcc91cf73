"""Outputs depend on inputs, params and code only: the same data stages in two project directories
(other paths, other depths) write the same bytes, and what differs (when, where, how long, what was
reused) is in the run log, outside the outputs. The end-to-end test does the same for every DVC
stage through `dvc repro`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deepmolm.config import load_params
from deepmolm.data.ingest import ingest_chebi20
from deepmolm.data.instructions import build_instructions, instruction_shards
from deepmolm.runtime.run_log import portable_path, read_runs
from tests.conftest import PARAMS, SHARED
from tests.data.test_shard_build import build


def project(root: Path) -> Path:
    """A project directory with the repo's params.yaml and ../shared beside it, as a clone has."""
    (root / "main").mkdir(parents=True)
    (root / "shared").symlink_to(SHARED)
    shutil.copy(PARAMS, root / "main" / "params.yaml")
    return root / "main"


def run_data_stages(directory: Path, monkeypatch) -> dict[str, bytes]:
    """Ingest, featurize and instructions from `directory`, as DVC runs them: from the project root."""
    monkeypatch.chdir(directory)
    params = load_params(directory / "params.yaml", ["sources.chebi20.max_rows_per_split=4",
                                                     "featurize.rows_per_part=3"])
    raw = ingest_chebi20(params, progress=False)
    shards = build(params, raw.out, params.paths.shards_dir)
    build_instructions(Path(shards.out), params.paths.instructions_dir, params.instructions)
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted((directory / "data").rglob("*"))
            if p.is_file() and "cache" not in p.parts}


def test_two_project_directories_write_the_same_bytes(tmp_path, monkeypatch):
    first = run_data_stages(project(tmp_path / "a"), monkeypatch)
    second = run_data_stages(project(tmp_path / "b" / "deeper"), monkeypatch)
    assert any(name.endswith(".parquet") for name in first) and len(first) >= 8
    assert first.keys() == second.keys()
    differing = [name for name in first if first[name] != second[name]]
    assert not differing, f"outputs that depend on where or when they were made: {differing}"
    manifest = json.loads(first[next(n for n in first if n.startswith("data/raw/") and n.endswith("manifest.json"))])
    assert [ref["extra"]["read_from"] for ref in manifest["inputs"]] == ["../shared/data/chebi20/test.txt",
                                                                          "../shared/data/chebi20/validation.txt"]
    instructions = next(Path(n).parent for n in first if n.startswith("data/instructions/") and n.endswith("manifest.json"))
    recorded = json.loads(first[str(instructions / "manifest.json")])["shards"]
    assert recorded.startswith("../../../shards/chebi20/"), "relative to the set itself, so it resolves anywhere"
    monkeypatch.chdir(tmp_path)  # a Ray worker's working directory is not the project's
    assert instruction_shards(tmp_path / "a" / "main" / instructions) == tmp_path / "a" / "main" / "data" / recorded[9:]
    for directory in (tmp_path / "a" / "main", tmp_path / "b" / "deeper" / "main"):
        runs = read_runs(directory / "logs")
        assert [r["kind"] for r in runs] == ["ingest", "featurize"]
        assert runs[0]["cwd"] == str(directory) and runs[1]["seconds"] > 0 and runs[1]["reused"] == 0


def test_params_dump_relative_to_the_project_root(tmp_path, monkeypatch):
    """Manifests, version ids and run names are digests of params dumped as JSON: no absolute path may
    be in them, or every clone would get other ids."""
    dumps = []
    for root in (tmp_path / "a", tmp_path / "b" / "c"):
        directory = project(root)
        monkeypatch.chdir(directory)
        params = load_params(directory / "params.yaml")
        assert params.paths.raw_dir == directory / "data" / "raw", "in the program, paths stay absolute"
        dumps.append(json.dumps(params.sections()))
        assert str(tmp_path) not in dumps[-1]
    assert dumps[0] == dumps[1]
    assert json.loads(dumps[0])["sources"]["chebi20"]["mirror"] == "../shared/data/chebi20"


@pytest.mark.parametrize(("path", "recorded"), [("s3://bucket/runs", "s3://bucket/runs"), ("data/raw", "data/raw")])
def test_portable_path_keeps_uris_and_relative_paths(path, recorded):
    assert portable_path(path) == recorded


def test_portable_path_is_relative_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert portable_path(tmp_path / "data" / "x") == "data/x"
    assert portable_path(tmp_path.parent / "shared") == "../shared"


def test_the_benchmarks_splits_follow_the_jobs_whatever_the_string_hashes(tmp_path):
    """The MuMo baseline is reported in the order of these splits; under a set of split names it came out
    random/scaffold in one process and scaffold/random in the next (results.json differed between clones)."""
    script = ("import json; from deepmolm.evaluation.mumo.jobs import job_splits\n"
              "jobs = [{'split': s, 'seed': seed} for s in ('scaffold', 'random') for seed in (1, 0)]\n"
              "jobs += [{'split': 'scaffold', 'seed': 1}]\n"
              "smiles = ['CCO', 'c1ccccc1O', 'C1CCCCC1N', 'CC(=O)O', 'c1ccncc1', 'CCCCCC', 'C1CCOC1', 'c1ccc2ccccc2c1',"
              " 'CCN', 'OCC(O)CO']\n"
              "print(json.dumps(job_splits(smiles, jobs)))")
    outputs = set()
    for hash_seed in ("1", "2", "3", "4"):
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": hash_seed})
        outputs.add(done.stdout)
    assert len(outputs) == 1, "the same splits in the same order in every process"
    assert list(json.loads(outputs.pop())) == ["scaffold/1", "scaffold/0", "random/1", "random/0"]
