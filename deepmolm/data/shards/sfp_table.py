"""The unified graphs of a shard version, as a sibling table keyed by cid: `<version>/sfp/`.

One Parquet file per shard part (same name) holds the graphs of that part's molecules; molecules
without a usable conformer are rows of `sfp/rejects-<part>.parquet` with a reason, so every accepted
molecule of the version is accounted for. `sfp/manifest.json`, written last, says the table is whole.
The graphs depend only on the version's rows and this module's code, so an existing table is reused.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rdkit import Chem, rdBase

from deepmolm.data.featurize.outcome import FeaturizeError
from deepmolm.data.featurize.sfp import FRAGMENT_SCALES, StructuredGraph, structured_graph
from deepmolm.data.shards.parts import read_manifest
from deepmolm.store.files import write_parquet_atomic
from deepmolm.store.versions import MANIFEST

SFP_DIR = "sfp"
SFP_VERSION = 1  # bump when structured_graph's output changes: tables of older code are rebuilt

_ints = lambda t: pa.list_(pa.list_(t))  # noqa: E731  [rows][columns] per molecule
SFP_SCHEMA = pa.schema([
    pa.field("cid", pa.int64(), nullable=False),
    pa.field("atoms", _ints(pa.int16()), nullable=False),
    pa.field("bonds", _ints(pa.int32()), nullable=False),
    pa.field("bond_features", _ints(pa.int16()), nullable=False),
    pa.field("bond_lengths", pa.list_(pa.float32()), nullable=False),
    pa.field("triplets", _ints(pa.int32()), nullable=False),
    pa.field("triplet_bonds", _ints(pa.int32()), nullable=False),
    pa.field("angles", pa.list_(pa.float32()), nullable=False),
    *[pa.field(f"fragments_{scale}", pa.list_(pa.int32()), nullable=False) for scale in FRAGMENT_SCALES],
])
SFP_REJECTS_SCHEMA = pa.schema([
    pa.field("cid", pa.int64(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),
    pa.field("detail", pa.string(), nullable=False),
])


def graph_row(cid: int, smiles: str, coords) -> dict:
    """One table row; FeaturizeError when the molecule has no conformer or it does not fit."""
    quiet = rdBase.BlockLogs()  # noqa: F841  (RDKit's per-molecule warnings, while it lives)
    mol = Chem.MolFromSmiles(smiles)  # the shards' SMILES is canonical: its atom order is the coords' order
    graph = structured_graph(mol, None if coords is None else np.asarray(coords, dtype=np.float64))
    return {"cid": cid, "atoms": graph.atoms.tolist(), "bonds": graph.bonds.tolist(),
            "bond_features": graph.bond_features.tolist(), "bond_lengths": graph.bond_lengths.tolist(),
            "triplets": graph.triplets.tolist(), "triplet_bonds": graph.triplet_bonds.tolist(),
            "angles": graph.angles.tolist(),
            **{f"fragments_{scale}": graph.fragments[scale].tolist() for scale in FRAGMENT_SCALES}}


def row_graph(row: dict) -> StructuredGraph:
    def array(key, dtype, width):
        return np.asarray(row[key], dtype=dtype).reshape(-1, width) if width else np.asarray(row[key], dtype=dtype)

    return StructuredGraph(
        atoms=array("atoms", np.int16, len(row["atoms"][0]) if row["atoms"] else 1),
        bonds=array("bonds", np.int32, 2), bond_features=array("bond_features", np.int16, 4),
        bond_lengths=array("bond_lengths", np.float32, 0), triplets=array("triplets", np.int32, 3),
        triplet_bonds=array("triplet_bonds", np.int32, 2), angles=array("angles", np.float32, 0),
        fragments={scale: array(f"fragments_{scale}", np.int32, 0) for scale in FRAGMENT_SCALES})


@dataclass
class SfpPart:
    path: str
    rows: int
    rejected: int
    rejected_by_reason: dict[str, int] = field(default_factory=dict)


def write_sfp_part(version_dir: Path, part: str) -> SfpPart:
    """The graphs of one shard part, each file written whole or not at all."""
    version_dir = Path(version_dir)
    out = version_dir / SFP_DIR
    out.mkdir(exist_ok=True)
    rows, rejects = [], []
    for molecule in pq.read_table(version_dir / part, columns=["cid", "smiles", "coords"]).to_pylist():
        try:
            rows.append(graph_row(molecule["cid"], molecule["smiles"], molecule["coords"]))
        except FeaturizeError as exc:
            rejects.append({"cid": molecule["cid"], "reason": exc.reason, "detail": exc.detail})
    stem = Path(part).stem
    for table, name in ((pa.Table.from_pylist(rows, schema=SFP_SCHEMA), part),
                        (pa.Table.from_pylist(rejects, schema=SFP_REJECTS_SCHEMA), f"rejects-{stem}.parquet")):
        write_parquet_atomic(table, out / name, compression="snappy")  # pyarrow's default, as the table was first written
    return SfpPart(path=part, rows=len(rows), rejected=len(rejects),
                   rejected_by_reason=dict(Counter(r["reason"] for r in rejects)))


def sfp_manifest(version_dir: Path) -> dict | None:
    """The table's manifest when a whole table of this code is there, else None."""
    path = Path(version_dir) / SFP_DIR / MANIFEST
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    return manifest if manifest.get("sfp_version") == SFP_VERSION else None


def pending_parts(version_dir: Path) -> list[str]:
    """Shard parts whose graphs are still to be written (all of them, unless the table is whole)."""
    if sfp_manifest(version_dir) is not None:
        return []
    shutil.rmtree(Path(version_dir) / SFP_DIR, ignore_errors=True)  # a partial table or an older code's
    return [p["path"] for p in read_manifest(version_dir)["parts"]]


def publish_sfp(version_dir: Path, parts: list[SfpPart]) -> dict:
    shard = read_manifest(version_dir)
    graphs, rejected = sum(p.rows for p in parts), sum(p.rejected for p in parts)
    if graphs + rejected != shard["counts"]["accepted"]:
        raise AssertionError(f"SFP accounting broke: {graphs} graphs + {rejected} rejected for "
                             f"{shard['counts']['accepted']} molecules in {version_dir}")
    reasons: Counter = Counter()
    for p in parts:
        reasons.update(p.rejected_by_reason)
    manifest = {"table": "sfp_graphs", "sfp_version": SFP_VERSION, "version": shard.get("version"),
                "counts": {"molecules": graphs + rejected, "graphs": graphs, "rejected": rejected},
                "rejected_by_reason": dict(sorted(reasons.items())),
                "parts": [asdict(p) for p in sorted(parts, key=lambda p: p.path)]}
    path = Path(version_dir) / SFP_DIR / MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _part_paths(version_dir: Path) -> list[tuple[Path, Path]]:
    """(graphs, rejects) file of each part of a whole table, in order."""
    manifest = sfp_manifest(version_dir)
    if manifest is None:
        raise FileNotFoundError(f"{version_dir} has no SFP table of this code (featurize with mumo.sfp: true)")
    directory = Path(version_dir) / SFP_DIR
    return [(directory / part["path"], directory / f"rejects-{Path(part['path']).stem}.parquet")
            for part in manifest["parts"]]


def iter_sfp_parts(version_dir: Path) -> Iterator[tuple[pa.Table, pa.Table]]:
    """(graphs, rejects) of each part of a whole table, in order: a large version one part at a time."""
    for graphs, rejects in _part_paths(version_dir):
        yield pq.read_table(graphs, schema=SFP_SCHEMA), pq.read_table(rejects, schema=SFP_REJECTS_SCHEMA)


def read_sfp_rejects(version_dir: Path) -> pa.Table:
    """Every rejection of a whole table (a few rows), without reading its graphs."""
    tables = [pq.read_table(rejects, schema=SFP_REJECTS_SCHEMA) for _, rejects in _part_paths(version_dir)]
    return pa.concat_tables(tables) if tables else SFP_REJECTS_SCHEMA.empty_table()


def read_sfp(version_dir: Path) -> tuple[pa.Table, pa.Table]:
    """(graphs, rejects) of a whole table."""
    parts = list(iter_sfp_parts(version_dir))
    return (pa.concat_tables([graphs for graphs, _ in parts]) if parts else SFP_SCHEMA.empty_table(),
            pa.concat_tables([rejects for _, rejects in parts]) if parts else SFP_REJECTS_SCHEMA.empty_table())
