"""Version resolution, the one mechanism behind raw snapshots, shard versions and instruction sets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from deepmolm.store.versions import LATEST, MANIFEST, latest, list_versions, mark_latest, read_manifest, resolve_version


def _version(root: Path, name: str, mtime_ns: int, marker: str = MANIFEST) -> Path:
    directory = root / name
    directory.mkdir(parents=True)
    for file in {MANIFEST, marker}:
        (directory / file).write_text("{}")
        os.utime(directory / file, ns=(mtime_ns, mtime_ns))
    return directory


def test_latest_wins_over_the_newest_and_a_version_dir_resolves_to_itself(tmp_path):
    old = _version(tmp_path, "aaa", 1_000_000_000)
    new = _version(tmp_path, "bbb", 2_000_000_000)
    assert resolve_version(tmp_path, "thing") == new  # no LATEST: the newest manifest
    mark_latest(old)  # params went back to an earlier setting: the earlier version is current
    assert (tmp_path / LATEST).read_text() == "aaa\n"
    assert resolve_version(tmp_path, "thing") == old
    assert resolve_version(new, "thing") == new
    assert list_versions(tmp_path) == [old, new]


def test_unfinished_and_staging_directories_are_not_versions(tmp_path):
    done = _version(tmp_path, "done", 1_000_000_000)
    _version(tmp_path, ".building-next", 3_000_000_000)  # a staging directory, newest
    (tmp_path / "half").mkdir()  # no manifest: an interrupted write
    (tmp_path / LATEST).write_text("half\n")  # LATEST naming an unfinished one is ignored
    assert latest(tmp_path) is None
    assert resolve_version(tmp_path, "thing") == done


def test_nested_sets_with_their_own_marker(tmp_path):
    a = _version(tmp_path / "chebi20", "a", 1_000_000_000, marker="examples.parquet")
    _version(tmp_path / "chebi20", "b-no-examples", 2_000_000_000)
    assert resolve_version(tmp_path, "instruction set", "examples.parquet", nested=True) == a


def test_missing_versions_and_manifests_say_what_was_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError, match="no shard version in"):
        resolve_version(tmp_path, "shard version")
    with pytest.raises(FileNotFoundError, match="is not a raw-table snapshot: no manifest.json"):
        read_manifest(tmp_path, "raw-table snapshot")
