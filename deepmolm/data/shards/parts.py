"""Molecule shard versions: the Arrow schema, atomic part files, the manifest, readers, version ids.

A version lives in `<shards_dir>/<dataset>/<version>/` with `part-NNNNN.parquet`, `rejects.parquet` and
`manifest.json`. While it is being built it lives in `.building-<version>/`, where every finished
part leaves three files written atomically (part, its rejects, and last a JSON marker): a marker means
the part is complete, so a run killed at any point resumes from the markers. Publishing merges the
rejects, writes the manifest and renames the directory into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from deepmolm import __version__
from deepmolm.config import VIEWS
from deepmolm.data.sources.raw_table import PUBCHEM_PROPERTIES_TYPE
from deepmolm.store import versions
from deepmolm.store.files import sha256_file, write_parquet, write_parquet_atomic
from deepmolm.store.versions import MANIFEST

SCHEMA_VERSION = 1
REJECTS = "rejects.parquet"

PROPERTIES_TYPE = pa.struct(
    [
        ("mw", pa.float64()),
        ("exact_mass", pa.float64()),
        ("logp", pa.float64()),
        ("tpsa", pa.float64()),
        ("hbd", pa.int32()),
        ("hba", pa.int32()),
        ("rotatable_bonds", pa.int32()),
        ("rings", pa.int32()),
        ("heavy_atoms", pa.int32()),
        ("complexity", pa.float64()),
        # PubChem's own values, when the raw row has them, beside RDKit's.
        *((f"pubchem_{field.name}", field.type) for field in PUBCHEM_PROPERTIES_TYPE),
    ]
)

SHARD_SCHEMA = pa.schema(
    [
        pa.field("cid", pa.int64(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("split", pa.string()),
        pa.field("smiles", pa.string(), nullable=False),
        pa.field("inchikey", pa.string(), nullable=False),
        pa.field("selfies", pa.string()),
        pa.field("selfies_atom_index", pa.list_(pa.int32()), nullable=False),
        pa.field("description", pa.string()),
        pa.field("image_png", pa.binary()),  # null where the source's views leave the drawing out
        pa.field("conformer_source", pa.string(), nullable=False),
        pa.field("coords", pa.list_(pa.list_(pa.float32(), 3))),
        pa.field("e3fp", pa.list_(pa.list_(pa.int32()))),
        pa.field("properties", PROPERTIES_TYPE, nullable=False),
        pa.field("flags", pa.list_(pa.string()), nullable=False),
        pa.field("notes", pa.string()),
        pa.field("input_hash", pa.string(), nullable=False),
    ],
    metadata={"deepmolm.table": "molecules", "deepmolm.schema_version": str(SCHEMA_VERSION)},
)

SHARD_REJECTS_SCHEMA = pa.schema(
    [
        pa.field("cid", pa.int64()),
        pa.field("source", pa.string()),
        pa.field("raw_smiles", pa.string()),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
        pa.field("input_hash", pa.string(), nullable=False),
    ],
    metadata={"deepmolm.table": "shard_rejects", "deepmolm.schema_version": str(SCHEMA_VERSION)},
)


def version_id(raw_snapshot: str, params_hash: str) -> str:
    """Same raw snapshot (a hash of its bytes), params, schema and code -> same version id."""
    key = {"raw": raw_snapshot, "params": params_hash, "schema": SCHEMA_VERSION, "code": __version__}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


@dataclass
class PartResult:
    """What one finished part holds; kept as its marker file and gathered into the manifest (`reused`
    and `seconds_by_step` into the run log)."""

    index: int
    path: str
    rows: int
    sha256: str
    rejected: int
    reused: int
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    conformer_sources: dict[str, int] = field(default_factory=dict)
    flags: dict[str, int] = field(default_factory=dict)
    seconds_by_step: dict[str, float] = field(default_factory=dict)


def write_part(building: Path, index: int, records: list[dict], rejects: list[dict], *, reused: int,
               seconds_by_step: dict[str, float]) -> PartResult:
    """Part, then its rejects, then the marker: each atomic, so a marker means all three are whole."""
    path = building / part_name(index)
    write_parquet_atomic(pa.Table.from_pylist(records, schema=SHARD_SCHEMA), path)
    return _finish_part(building, index, path, records, rejects, reused=reused, seconds_by_step=seconds_by_step)


def copy_part(building: Path, index: int, source: Path) -> PartResult:
    """Part `index` as a copy of an earlier version's part holding exactly its rows, in order: the
    bytes writing those rows would give (parts are deterministic), at the cost of a file copy."""
    path = building / part_name(index)
    temporary = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        shutil.copyfile(source, temporary)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    os.replace(temporary, path)
    records = pq.read_table(path, columns=["conformer_source", "flags"]).to_pylist()
    return _finish_part(building, index, path, records, [], reused=len(records), seconds_by_step={})


def _finish_part(building: Path, index: int, path: Path, records: list[dict], rejects: list[dict], *, reused: int,
                 seconds_by_step: dict[str, float]) -> PartResult:
    write_parquet_atomic(pa.Table.from_pylist(rejects, schema=SHARD_REJECTS_SCHEMA), building / f"rejects-{index:05d}.parquet")
    result = PartResult(
        index=index,
        path=path.name,
        rows=len(records),
        sha256=sha256_file(path),
        rejected=len(rejects),
        reused=reused,
        rejected_by_reason=dict(sorted(Counter(r["reason"] for r in rejects).items())),
        conformer_sources=dict(sorted(Counter(r["conformer_source"] for r in records).items())),
        flags=dict(sorted(Counter(flag for r in records for flag in r["flags"]).items())),
        seconds_by_step={k: round(v, 3) for k, v in sorted(seconds_by_step.items())},
    )
    marker = building / f"part-{index:05d}.json"
    temporary = marker.with_name(f".tmp-{os.getpid()}-{marker.name}")
    temporary.write_text(json.dumps(asdict(result), sort_keys=True))
    os.replace(temporary, marker)
    return result


def finished_parts(building: Path) -> dict[int, PartResult]:
    """Parts a previous (possibly killed) run completed, by index."""
    done = {}
    for marker in sorted(building.glob("part-*.json")):
        result = PartResult(**json.loads(marker.read_text()))
        if (building / result.path).is_file():
            done[result.index] = result
    return done


def sum_counts(dicts: list[dict]) -> dict:
    total: Counter = Counter()
    for counts in dicts:
        total.update(counts)
    return dict(sorted(total.items()))


def publish_version(building: Path, final: Path, parts: list[PartResult], manifest_fields: dict) -> dict:
    """Merge the per-part rejects, write the manifest, move the version into place; returns the manifest."""
    parts = sorted(parts, key=lambda p: p.index)
    reject_tables = [pq.read_table(building / f"rejects-{p.index:05d}.parquet", schema=SHARD_REJECTS_SCHEMA) for p in parts]
    rejects = pa.concat_tables(reject_tables) if reject_tables else SHARD_REJECTS_SCHEMA.empty_table()
    write_parquet(rejects, building / REJECTS)
    accepted, rejected = sum(p.rows for p in parts), sum(p.rejected for p in parts)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "table": "molecules",
        **manifest_fields,
        "code_version": __version__,
        # how many rows were reused, and how long featurizing took, depend on what ran before and on the
        # machine: they go to the run log (deepmolm/runtime/run_log.py), not into the version
        "parts": [{"path": p.path, "rows": p.rows, "sha256": p.sha256, "rejected": p.rejected} for p in parts],
        "rejects": {"path": REJECTS, "rows": rejects.num_rows, "sha256": sha256_file(building / REJECTS)},
        "counts": {
            "input_rows": accepted + rejected,
            "accepted": accepted,
            "rejected": rejected,
        },
        "rejected_by_reason": sum_counts([p.rejected_by_reason for p in parts]),
        "conformer_sources": sum_counts([p.conformer_sources for p in parts]),
        "flags": sum_counts([p.flags for p in parts]),
    }
    for p in parts:
        (building / f"rejects-{p.index:05d}.parquet").unlink()
        (building / f"part-{p.index:05d}.json").unlink()
    (building / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    if final.exists():
        shutil.rmtree(final)  # same id means same inputs and params: an older copy of the same version
    os.replace(building, final)
    return manifest


def read_manifest(version_dir: Path) -> dict:
    manifest = versions.read_manifest(version_dir, "shard version")
    if manifest.get("table") != "molecules":
        raise FileNotFoundError(f"{version_dir} holds a {manifest.get('table')!r} table, not molecule shards")
    return manifest


def manifest_views(manifest: dict) -> frozenset[str]:
    """The views (drawing, e3fp) a version's records carry; a manifest that names none carries all."""
    return frozenset(manifest["params"].get("featurize.views", VIEWS))


def list_versions(dataset_dir: Path) -> list[Path]:
    """Published versions of a dataset, oldest first."""
    return versions.list_versions(dataset_dir)


def resolve_version(path: Path) -> Path:
    """A version directory, or a dataset directory: the version the last featurization produced or reused."""
    return versions.resolve_version(path, "shard version")


def read_shards(version_dir: Path, columns: list[str] | None = None) -> pa.Table:
    tables = list(iter_shard_parts(version_dir, columns))
    return pa.concat_tables(tables) if tables else _schema(columns).empty_table()


def iter_shard_parts(version_dir: Path, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """The version's parts one at a time, in manifest order: what holds one part at a time in memory
    (the drawings are most of a part's bytes) stays flat as the version grows."""
    schema = _schema(columns)
    for part in read_manifest(version_dir)["parts"]:
        yield pq.read_table(Path(version_dir) / part["path"], columns=columns, schema=schema)


def _schema(columns: list[str] | None) -> pa.Schema:
    return SHARD_SCHEMA if columns is None else pa.schema([SHARD_SCHEMA.field(c) for c in columns])


def read_shard_rejects(version_dir: Path) -> pa.Table:
    return pq.read_table(Path(version_dir) / REJECTS, schema=SHARD_REJECTS_SCHEMA)
