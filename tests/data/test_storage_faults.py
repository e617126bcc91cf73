"""Storage that cannot take a shard version (a full disk, a read-only root), on real small file
systems: one clear line and exit 1, no retries, nothing partial published, and after making room
the same command resumes to the bytes of a clean run."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from deepmolm.config import load_params
from deepmolm.data.ingest import ingest_tsv
from deepmolm.data.shards.build import build_version
from deepmolm.store.files import StorageError, storage_problem
from tests.conftest import PARAMS, REPO, tmp_overrides
from tests.featurize_inputs import small_chebi20_rows, write_table

PART_ROWS = "featurize.rows_per_part=5"


@contextlib.contextmanager
def tmpfs(where: Path, *options: str):
    """A real file system of its own (tmpfs) at `where`; the test is skipped where mounting is not allowed."""
    where.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), f"deepmolm-{uuid.uuid4().hex[:8]}",
                              str(where)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def part_hashes(version: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(version.glob("*.parquet"))}


@pytest.fixture(scope="module")
def raw(tmp_path_factory, shared):
    tmp = tmp_path_factory.mktemp("storage")
    params = load_params(PARAMS, tmp_overrides(tmp))
    return tmp, Path(ingest_tsv(params, write_table(tmp / "in.txt", small_chebi20_rows(shared, 40), bad=False),
                                progress=False).out)


def test_storage_problems_are_told_from_other_errors():
    assert storage_problem(OSError(errno.ENOSPC, "full")) == "no space left on the device"
    assert storage_problem(OSError(errno.EROFS, "ro")) == "the file system is read-only"
    assert storage_problem(OSError(errno.ENOENT, "missing")) is None and storage_problem(ValueError()) is None


@pytest.mark.timeout(400)
def test_a_full_disk_ends_in_one_line_without_retries_and_the_rerun_resumes_to_a_clean_runs_bytes(raw, tmp_path):
    tmp, snapshot = raw
    params = load_params(PARAMS, [*tmp_overrides(tmp_path), PART_ROWS])
    clean, _ = build_version(snapshot, tmp_path / "clean", params)
    command = [str(Path(sys.executable).with_name("deepmolm")), "data", "featurize", "--input", str(snapshot),
               "-S", PART_ROWS, "-S", "featurize.dask.workers=1", *(a for o in tmp_overrides(tmp_path) for a in ("-S", o)),
               "--quiet", "--json"]
    with tmpfs(tmp_path / "small", "size=1m") as small:
        first = subprocess.run([*command, "--out", str(small / "shards")], cwd=REPO, capture_output=True, text=True,
                               timeout=300)
        assert first.returncode == 1
        errors = [line for line in first.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "no space left on the device" in errors[0] and "nothing is published" in errors[0]
        assert "of 8 parts are written and kept in" in errors[0] and "[errno 28]" in errors[0], "said whole, unmangled"
        said = [line for line in first.stderr.splitlines() if "errno 28" in line.lower() and line not in errors]
        # besides the error line, only Prefect's own log of the flow run's final state may repeat it
        assert all("Finished in state Failed(" in line for line in said), "not said in a logged traceback"
        ours = [line for line in first.stderr.splitlines() if line.lstrip().startswith("File ")
                and str(REPO / "deepmolm") + "/" in line]
        # (a loaded machine can make Prefect's own client log a traceback of its API calls; none may be ours)
        assert not ours and "Retry" not in first.stderr, "a full disk is not retried and not a traceback"
        assert json.loads(first.stdout.splitlines()[-1])["success"] is False
        dataset = small / "shards" / clean.dataset
        assert not (dataset / clean.version).exists(), "nothing partial is published"
        kept = len(list(next(dataset.glob(".building-*")).glob("part-*.parquet")))
        assert 0 < kept < 8 and not list(dataset.rglob(".tmp-*")), "no half-written file left taking the space"

        subprocess.run(["mount", "-o", "remount,size=32m", str(small)], check=True)
        again = subprocess.run([*command, "--out", str(small / "shards")], cwd=REPO, capture_output=True, text=True,
                               timeout=300)
        assert again.returncode == 0, again.stderr[-2000:]
        resumed = json.loads(again.stdout.splitlines()[-1])
        assert resumed["resumed_parts"] == kept and resumed["accepted"] == 40
        assert part_hashes(Path(resumed["out"])) == part_hashes(Path(clean.out))


def test_a_read_only_shard_root_is_said_once_before_anything_runs(raw, tmp_path):
    _, snapshot = raw
    params = load_params(PARAMS, [*tmp_overrides(tmp_path), PART_ROWS])
    with tmpfs(tmp_path / "ro", "ro", "size=1m") as ro:
        with pytest.raises(StorageError, match=r"read-only under .*ro/shards: no shard version could be started"):
            build_version(snapshot, ro / "shards", params)


def test_a_shard_version_being_built_survives_a_dvc_experiment(tmp_path):
    """`dvc exp run` checks every output out as its lock records it and removes what is not in DVC's
    cache, a persisted output's files too: without the repository's .dvcignore, an interrupted
    featurization's parts (hours of conformers on a 100,000-row corpus) were deleted by the next
    experiment. The staging directory is DVC's to ignore; a published version is still an output."""
    dvc = [str(Path(sys.executable).with_name("dvc"))]
    repo = tmp_path / "project"
    repo.mkdir()

    identity = {f"GIT_{who}_{what}": value for who in ("AUTHOR", "COMMITTER")
                for what, value in (("NAME", "test"), ("EMAIL", "test@localhost"))}  # experiments are commits

    def run(*command: str) -> None:
        done = subprocess.run(list(command), cwd=repo, capture_output=True, text=True, timeout=120,
                              env={**os.environ, **identity})
        assert done.returncode == 0, done.stdout + done.stderr

    run("git", "init", "-q")
    run(*dvc, "init", "-q")
    (repo / ".dvcignore").write_text((REPO / ".dvcignore").read_text())
    (repo / "params.yaml").write_text("rows: 1\n")
    write = "import pathlib, yaml; n = yaml.safe_load(open('params.yaml'))['rows']; v = pathlib.Path(f'shards/v{n}'); " \
            "v.mkdir(parents=True, exist_ok=True); (v / 'manifest.json').write_text(str(n))"
    (repo / "dvc.yaml").write_text(f"stages:\n  featurize:\n    cmd: {sys.executable} -c \"{write}\"\n"
                                   "    params: [rows]\n    outs:\n      - shards:\n          persist: true\n")
    run("git", "add", "-A")
    run("git", "commit", "-qm", "pipeline")
    run(*dvc, "repro", "-q")
    building = repo / "shards" / ".building-v2"
    building.mkdir()
    (building / "part-00000.parquet").write_bytes(b"an interrupted run's finished part")
    run(*dvc, "exp", "run", "-q", "-S", "rows=3")
    assert (building / "part-00000.parquet").read_bytes() == b"an interrupted run's finished part"
    assert (repo / "shards" / "v3" / "manifest.json").is_file() and (repo / "shards" / "v1" / "manifest.json").is_file()
