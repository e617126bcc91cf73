"""Raw tables: the Arrow schema, an atomic snapshot writer, the manifest and a reader.

A snapshot lives in `<raw_dir>/<source>/<snapshot>/` with `part-NNNNN.parquet`, `rejects.parquet` and
`manifest.json`. It is written into a staging directory and renamed into place only when complete, so
a failed ingest leaves nothing behind. The snapshot id is a hash of the written bytes, so the same
input gives the same id and the same files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from deepmolm import __version__
from deepmolm.data.sources.records import InputRef, RawRecord, Rejection
from deepmolm.store import versions
from deepmolm.store.files import sha256_file, write_parquet
from deepmolm.store.versions import MANIFEST, mark_latest

SCHEMA_VERSION = 1

PUBCHEM_PROPERTIES_TYPE = pa.struct(
    [
        ("mw", pa.float64()),
        ("exact_mass", pa.float64()),
        ("xlogp", pa.float64()),
        ("tpsa", pa.float64()),
        ("complexity", pa.float64()),
        ("hbd", pa.int32()),
        ("hba", pa.int32()),
    ]
)

RAW_SCHEMA = pa.schema(
    [
        pa.field("cid", pa.int64(), nullable=False),
        pa.field("smiles", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("description", pa.string()),
        pa.field("split", pa.string()),
        pa.field("source_sha256", pa.string()),
        pa.field("source_line", pa.int64()),
        pa.field("inchikey", pa.string()),
        pa.field("description_source", pa.string()),
        pa.field("pubchem", PUBCHEM_PROPERTIES_TYPE),
        pa.field("coords", pa.list_(pa.list_(pa.float32(), 3))),
        pa.field("coords_status", pa.string()),
        pa.field("conformer_sdf", pa.string()),
    ],
    metadata={"deepmolm.table": "raw", "deepmolm.schema_version": str(SCHEMA_VERSION)},
)

REJECTS_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("split", pa.string()),
        pa.field("raw_id", pa.string(), nullable=False),
        pa.field("raw_smiles", pa.string()),
        pa.field("source_line", pa.int64()),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
    ],
    metadata={"deepmolm.table": "rejects", "deepmolm.schema_version": str(SCHEMA_VERSION)},
)

REJECTS = "rejects.parquet"


class RawTableWriter:
    """Collects records and rejects of one ingest, then publishes them as one snapshot."""

    def __init__(self, root: Path, source: str, *, rows_per_part: int, reject_text_chars: int):
        self.source_dir = Path(root) / source
        self.source = source
        self.rows_per_part = rows_per_part
        self.reject_text_chars = reject_text_chars
        self.staging = self.source_dir / f".staging-{uuid.uuid4().hex[:12]}"
        self._rows: list[dict] = []
        self._rejects: list[dict] = []
        self._parts: list[dict] = []
        self.accepted = 0

    def __enter__(self) -> RawTableWriter:
        self.staging.mkdir(parents=True, exist_ok=False)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.staging.exists():
            shutil.rmtree(self.staging, ignore_errors=True)

    def add(self, record: RawRecord) -> None:
        self._rows.append(record.as_row())
        self.accepted += 1
        if len(self._rows) >= self.rows_per_part:
            self._flush()

    def reject(self, rejection: Rejection) -> None:
        row = asdict(rejection)
        row["reason"] = str(rejection.reason)
        for key in ("raw_id", "raw_smiles", "detail"):
            text = row[key]
            if text is not None and len(text) > self.reject_text_chars:
                row[key] = text[: self.reject_text_chars] + f"... [{len(text)} characters]"
        self._rejects.append(row)

    @property
    def rejected(self) -> int:
        return len(self._rejects)

    def rejected_by_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(r["reason"] for r in self._rejects).items()))

    def _flush(self) -> None:
        if not self._rows:
            return
        name = f"part-{len(self._parts):05d}.parquet"
        path = self.staging / name
        write_parquet(pa.Table.from_pylist(self._rows, schema=RAW_SCHEMA), path)
        self._parts.append({"path": name, "rows": len(self._rows), "sha256": sha256_file(path)})
        self._rows = []

    def publish(self, *, inputs: list[InputRef], params: dict, params_hash: str) -> Path:
        """Write what is left, the rejects and the manifest, then move the snapshot into place."""
        self._flush()
        rejects_path = self.staging / REJECTS
        write_parquet(pa.Table.from_pylist(self._rejects, schema=REJECTS_SCHEMA), rejects_path)
        rejects_sha = sha256_file(rejects_path)
        content = json.dumps([p["sha256"] for p in self._parts] + [rejects_sha]).encode()
        snapshot = hashlib.sha256(content).hexdigest()[:16]
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "table": "raw",
            "source": self.source,
            "snapshot": snapshot,
            "code_version": __version__,
            "params_hash": params_hash,
            "params": params,
            "inputs": [asdict(ref) for ref in inputs],
            "parts": self._parts,
            "rejects": {"path": REJECTS, "rows": len(self._rejects), "sha256": rejects_sha},
            "counts": {
                "input_rows": self.accepted + self.rejected,
                "accepted": self.accepted,
                "rejected": self.rejected,
            },
            "rejected_by_reason": self.rejected_by_reason(),
        }
        (self.staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        final = self.source_dir / snapshot
        if final.exists():
            # Same bytes already published (the id is their hash): keep the existing snapshot.
            shutil.rmtree(self.staging)
        else:
            os.replace(self.staging, final)
        mark_latest(final)
        return final


def read_manifest(snapshot_dir: Path) -> dict:
    return versions.read_manifest(snapshot_dir, "raw-table snapshot")


def resolve_snapshot(path: Path) -> Path:
    """A snapshot directory, or a source directory holding snapshots: the current one."""
    return versions.resolve_version(path, "raw-table snapshot")


def read_raw_table(snapshot_dir: Path) -> pa.Table:
    tables = list(iter_raw_parts(snapshot_dir))
    return pa.concat_tables(tables) if tables else RAW_SCHEMA.empty_table()


def iter_raw_parts(snapshot_dir: Path) -> Iterator[pa.Table]:
    """The snapshot's parts, one at a time (a part is `ingest.rows_per_part` rows at most)."""
    for part in read_manifest(snapshot_dir)["parts"]:
        yield pq.read_table(Path(snapshot_dir) / part["path"], schema=RAW_SCHEMA)


def read_rejects(snapshot_dir: Path) -> pa.Table:
    return pq.read_table(Path(snapshot_dir) / REJECTS, schema=REJECTS_SCHEMA)


def read_raw_rows(snapshot_dir: Path, start: int, stop: int) -> list[dict]:
    """Rows [start, stop) of a snapshot, reading only the parts that hold them."""
    manifest = read_manifest(snapshot_dir)
    rows: list[dict] = []
    offset = 0
    for part in manifest["parts"]:
        lo, hi = max(start, offset), min(stop, offset + part["rows"])
        if lo < hi:
            table = pq.read_table(Path(snapshot_dir) / part["path"], schema=RAW_SCHEMA)
            rows.extend(table.slice(lo - offset, hi - lo).to_pylist())
        offset += part["rows"]
    return rows
