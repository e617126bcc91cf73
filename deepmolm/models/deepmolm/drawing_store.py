"""A shard version's drawings at the model's image size, decoded once and read back by position.

Training reads each molecule's drawing once per example per epoch, in a new order each time, and
decoding and shrinking a 1,024-px PNG costs 50-100 ms: at 100,000 molecules that is the whole cost of
an epoch of a small model, and no per-process cache stays small and useful as the corpus grows.
So the drawings are shrunk once per (shard version, image size, shrinking code) into fixed-size
uint8 records, one file per shard part, and a worker reads a record with one `pread`: no decoding in
the loop, and no memory that grows with the corpus (the files are read, not mapped).

The store is re-creatable, so it lives under `paths.cache_dir`, outside DVC's outputs; a store is
whole or absent (built beside its final name and renamed), and two builders racing for one leave one.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

import pyarrow.parquet as pq
import torch

from deepmolm.data.shards.parts import read_manifest, resolve_version
from deepmolm.models.deepmolm import processing

MANIFEST = "drawings.json"
RECORD_SUFFIX = ".u8"
PNG_BATCH = 64  # PNGs decoded per read of a part: a few MB, whatever the part's size


def shrinking_key() -> str:
    """A digest of the code that turns a PNG into pixels: a store made by other code is not reused."""
    source = inspect.getsource(processing.image_pixels) + inspect.getsource(processing.thicken_ink)
    return hashlib.sha256(source.encode()).hexdigest()[:12]


def store_dir(root: Path, shard_version: str, size: int) -> Path:
    return Path(root) / shard_version / f"{size}px-{shrinking_key()}"


def write_part(part: str, out: str, size: int) -> int:
    """Every drawing of one shard part, in row order, as [3, size, size] uint8 records; returns the rows."""
    rows = 0
    with open(out, "wb") as handle:
        for batch in pq.ParquetFile(part).iter_batches(batch_size=PNG_BATCH, columns=["image_png"]):
            for png in batch.column(0).to_pylist():
                handle.write(processing.image_pixels(png, size).numpy().tobytes())
                rows += 1
    return rows


def build_drawings(shards: Path, size: int, root: Path,
                   map_calls: Callable[[Callable, list[tuple]], Iterable[int]] | None = None) -> Path:
    """The store of `shards` (a shard version, or a dataset directory: its newest) at `size`, built
    unless it exists. `map_calls(fn, calls)` runs `fn(*call)` for each part and returns the results in
    order (a Ray or Dask map on a cluster); by default, one part after another in this process."""
    version_dir = resolve_version(Path(shards))
    manifest = read_manifest(version_dir)
    final = store_dir(root, manifest["version"], size)
    if (final / MANIFEST).is_file():
        return final
    staging = final.with_name(f".building-{final.name}-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    parts = [part["path"] for part in manifest["parts"]]
    calls = [(str(version_dir / part), str(staging / record_name(part)), size) for part in parts]
    rows = list((map_calls or _in_turn)(write_part, calls))
    expected = [part["rows"] for part in manifest["parts"]]
    if rows != expected:
        shutil.rmtree(staging, ignore_errors=True)
        raise RuntimeError(f"drawings of {version_dir}: parts gave {rows} rows, the manifest says {expected}")
    (staging / MANIFEST).write_text(json.dumps({
        "shard_version": manifest["version"], "size": size, "shrinking": shrinking_key(),
        "record_bytes": 3 * size * size, "parts": dict(zip(parts, rows)),
    }, indent=2, sort_keys=True) + "\n")
    try:
        os.replace(staging, final)
    except OSError:  # another builder finished first: its store is the same bytes
        shutil.rmtree(staging, ignore_errors=True)
        if not (final / MANIFEST).is_file():
            raise
    return final


def _in_turn(fn: Callable, calls: list[tuple]) -> list:
    return [fn(*call) for call in calls]


def record_name(part: str) -> str:
    return str(Path(part).with_suffix(RECORD_SUFFIX))


class Drawings:
    """Read access to one store: `pixels(part, row)` is the drawing `image_pixels` would give."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        manifest = json.loads((self.directory / MANIFEST).read_text())
        self.shard_version, self.size, self.parts = manifest["shard_version"], manifest["size"], manifest["parts"]
        self.record = manifest["record_bytes"]
        self._files: dict[str, int] = {}

    def pixels(self, part: str, row: int) -> torch.Tensor:
        if not 0 <= row < self.parts.get(part, 0):
            raise IndexError(f"row {row} of part {part}: the store {self.directory} has "
                             f"{self.parts.get(part, 'no such part')} rows there")
        data = os.pread(self._file(part), self.record, row * self.record)
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(3, self.size, self.size)

    def _file(self, part: str) -> int:
        if part not in self._files:
            self._files[part] = os.open(self.directory / record_name(part), os.O_RDONLY)
        return self._files[part]

    def __getstate__(self) -> dict:  # what a DataLoader worker gets: the store's name, not open files
        return {**self.__dict__, "_files": {}}

    def __del__(self) -> None:
        for descriptor in getattr(self, "_files", {}).values():
            os.close(descriptor)
