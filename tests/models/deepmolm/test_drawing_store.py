"""The drawing store: the same pixels as decoding the PNG, built once, whole or absent, read without
holding the corpus."""

from __future__ import annotations

import json
import pickle
import shutil

import pyarrow.parquet as pq
import pytest
import torch

from deepmolm.data.shards.parts import read_manifest
from deepmolm.models.deepmolm import drawing_store
from deepmolm.models.deepmolm.drawing_store import MANIFEST, Drawings, build_drawings, record_name
from deepmolm.models.deepmolm.processing import image_pixels


def test_every_record_is_the_drawing_image_pixels_gives(small_versions, drawings64):
    store = Drawings(drawings64)
    manifest = read_manifest(small_versions[0])
    assert store.shard_version == manifest["version"] and store.size == 64
    for part in manifest["parts"]:
        pngs = pq.read_table(small_versions[0] / part["path"], columns=["image_png"]).column(0).to_pylist()
        assert store.parts[part["path"]] == len(pngs) == part["rows"]
        for row in reversed(range(len(pngs))):  # any order: each read is at its own offset
            assert torch.equal(store.pixels(part["path"], row), image_pixels(pngs[row], 64))
        assert (drawings64 / record_name(part["path"])).stat().st_size == len(pngs) * 3 * 64 * 64
    with pytest.raises(IndexError, match="row 5 of part part-00000.parquet"):
        store.pixels("part-00000.parquet", 5)
    with pytest.raises(IndexError, match="no such part"):
        store.pixels("part-00099.parquet", 0)


def test_a_store_is_built_once_per_version_and_size_and_by_the_map_it_is_given(small_versions, tmp_path):
    calls = []

    def recording_map(fn, arguments):
        calls.append(len(arguments))
        return [fn(*a) for a in arguments]

    first = build_drawings(small_versions[0], 32, tmp_path, map_calls=recording_map)
    assert calls == [len(read_manifest(small_versions[0])["parts"])]
    again = build_drawings(small_versions[0].parent, 32, tmp_path, map_calls=recording_map)  # the dataset dir: its newest
    assert again == first and calls == [2], "an existing store is not rebuilt"
    other = build_drawings(small_versions[0], 16, tmp_path, map_calls=recording_map)
    assert other != first and Drawings(other).size == 16 and calls == [2, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == [read_manifest(small_versions[0])["version"]], "no staging left"
    shrinking = json.loads((first / MANIFEST).read_text())["shrinking"]
    assert first.name == f"32px-{shrinking}", "other shrinking code makes another store"


def test_a_part_that_gives_other_rows_than_its_manifest_leaves_no_store(small_versions, tmp_path):
    with pytest.raises(RuntimeError, match="the manifest says"):
        build_drawings(small_versions[0], 16, tmp_path, map_calls=lambda fn, calls: [fn(*c) + 1 for c in calls])
    version = read_manifest(small_versions[0])["version"]
    assert not any((tmp_path / version).iterdir()), "neither a store nor its staging directory"


def test_a_builder_that_loses_the_race_keeps_the_winners_store(small_versions, tmp_path, monkeypatch):
    winner = build_drawings(small_versions[0], 16, tmp_path / "a")
    target = drawing_store.store_dir(tmp_path / "b", read_manifest(small_versions[0])["version"], 16)

    def finish_first(fn, calls):  # the other builder renames its store while this one is still writing
        shutil.copytree(winner, target)
        return [fn(*c) for c in calls]

    assert build_drawings(small_versions[0], 16, tmp_path / "b", map_calls=finish_first) == target
    assert [p.name for p in target.parent.iterdir()] == [target.name]
    assert torch.equal(Drawings(target).pixels("part-00001.parquet", 3), Drawings(winner).pixels("part-00001.parquet", 3))


def test_a_store_pickled_for_a_loader_worker_reopens_its_files(drawings64):
    store = Drawings(drawings64)
    expected = store.pixels("part-00001.parquet", 2)
    assert store._files, "the first read opened the part's file"
    copy = pickle.loads(pickle.dumps(store))
    assert copy._files == {} and torch.equal(copy.pixels("part-00001.parquet", 2), expected)
