"""Directories of versions, the one storage layer every versioned output uses: raw snapshots, shard
versions and instruction sets each live as `<dir>/<version id>/` with a `manifest.json` written last
(a version without one is not finished), and `<dir>/LATEST` names the current one.

Older versions accumulate beside the current one (they are the featurization cache, and DVC keeps
them with `persist`). "The newest by creation time" is not what the next stage wants: when params go
back to an earlier setting, the earlier version is reused, not created again, and it is still the one
the pipeline just produced. So every run that produces or reuses a version points LATEST at it, and
readers of a directory follow the pointer first.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

LATEST = "LATEST"
MANIFEST = "manifest.json"


def mark_latest(version_dir: Path) -> None:
    version_dir = Path(version_dir)
    pointer = version_dir.parent / LATEST
    staging = pointer.with_name(f".{LATEST}.{os.getpid()}")
    staging.write_text(version_dir.name + "\n")
    os.replace(staging, pointer)  # readers never see a half-written name


def latest(directory: Path, marker: str = MANIFEST) -> Path | None:
    """The version LATEST names, when there is one holding `marker` (the file that says it is whole)."""
    pointer = Path(directory) / LATEST
    if not pointer.is_file():
        return None
    named = Path(directory) / pointer.read_text().strip()
    return named if (named / marker).is_file() else None


def by_age(version_dirs: list[Path], marker: str = MANIFEST) -> list[Path]:
    """Oldest first, by the time the file system gives `marker`: outputs record no creation time
    (deepmolm/runtime/run_log.py says why), so without LATEST this is the one clue left."""
    return sorted(version_dirs, key=lambda d: ((Path(d) / marker).stat().st_mtime_ns, Path(d).name))


def list_versions(directory: Path, marker: str = MANIFEST, *, nested: bool = False) -> list[Path]:
    """Finished versions under `directory` (its children; any depth when `nested`), oldest first;
    staging directories (a leading dot) are not versions."""
    found = Path(directory).rglob(marker) if nested else Path(directory).glob(f"*/{marker}")
    versions = [p.parent for p in found if not any(part.startswith(".") for part in p.parent.relative_to(directory).parts)]
    return by_age([v for v in versions if (v / MANIFEST).is_file()], MANIFEST)


def resolve_version(path: Path, what: str, marker: str = MANIFEST, *, nested: bool = False) -> Path:
    """A version directory as it is; a directory of versions: the one LATEST names, else the newest.
    `what` names the kind of version in the error when there is none."""
    path = Path(path)
    if (path / marker).is_file():
        return path
    if pointed := latest(path, marker):
        return pointed
    if versions := list_versions(path, marker, nested=nested):
        return versions[-1]
    raise FileNotFoundError(f"no {what} in {path}")


def read_manifest(version_dir: Path, what: str) -> dict:
    path = Path(version_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{version_dir} is not a {what}: no {MANIFEST}")
    return json.loads(path.read_text())
