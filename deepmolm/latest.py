"""Which version of a directory of versions the last run produced: `<dir>/LATEST` names it.

Raw snapshots, shard versions and instruction sets accumulate side by side (older ones are the
featurization cache, and DVC keeps them with `persist`). "The newest by creation time" is not what
the next stage wants: when params go back to an earlier setting, the earlier version is reused, not
created again, and it is still the one the pipeline just produced. So every run that produces or
reuses a version points LATEST at it, and readers of a directory follow the pointer first.
"""

from __future__ import annotations

import os
from pathlib import Path

LATEST = "LATEST"


def mark_latest(version_dir: Path) -> None:
    version_dir = Path(version_dir)
    pointer = version_dir.parent / LATEST
    staging = pointer.with_name(f".{LATEST}.{os.getpid()}")
    staging.write_text(version_dir.name + "\n")
    os.replace(staging, pointer)  # readers never see a half-written name


def latest(directory: Path, marker: str) -> Path | None:
    """The version LATEST names, when there is one holding `marker` (its manifest file)."""
    pointer = Path(directory) / LATEST
    if not pointer.is_file():
        return None
    named = Path(directory) / pointer.read_text().strip()
    return named if (named / marker).is_file() else None


def by_age(version_dirs: list[Path], marker: str) -> list[Path]:
    """Oldest first, by the time the file system gives `marker` (its manifest): outputs record no
    creation time (deepmolm/run_log.py says why), so without LATEST this is the one clue left."""
    return sorted(version_dirs, key=lambda d: ((Path(d) / marker).stat().st_mtime_ns, Path(d).name))
