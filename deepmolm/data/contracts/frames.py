"""Tables as the data contracts see them: each table's own columns plus columns derived for a check.

Great Expectations checks columns of scalars; facts about a PNG, a nested array or a manifest are
turned into such columns here (image width, rows of E3FP identifiers, whether a SELFIES decodes back
to the same molecule), so the suites in data_contracts/ state every rule with a stock expectation.
Pure functions: Arrow or manifest in, pandas frame out.
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Iterable, Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import selfies as sf
from PIL import Image, UnidentifiedImageError
from rdkit import Chem, rdBase

from deepmolm.config import RATE_KEY_ALL, RATE_KEY_ANY, VIEWS, ContractsParams
from deepmolm.data.shards.parts import REJECTS, SHARD_REJECTS_SCHEMA, SHARD_SCHEMA
from deepmolm.data.sources.raw_table import RAW_SCHEMA
from deepmolm.store.files import sha256_file

PROPERTY_COLUMNS = ("mw", "exact_mass", "logp", "tpsa", "hbd", "hba", "rotatable_bonds", "rings", "heavy_atoms",
                    "complexity")
NOT_DRAWN = "not drawn"  # image_png in the frame: a version whose source leaves the drawing out
CHUNK_ROWS = 50_000  # rows of a large table a contract holds at once (a whole number of parts)
MOLECULE_COLUMNS = ("cid", "source", "split", "smiles", "inchikey", "selfies", "description", "conformer_source",
                    "input_hash")


def png_facts(data: bytes | None) -> tuple[str | None, int | None, int | None, str | None]:
    """(format, width, height, mode) from the image header; format 'invalid' when it does not open."""
    if data is None:
        return None, None, None, None
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.format, image.width, image.height, image.mode
    except (UnidentifiedImageError, OSError, ValueError):
        return "invalid", None, None, None


def e3fp_facts(e3fp: list | None, level: int) -> tuple[int | None, bool | None, int | None, int | None]:
    """(rows, every row has level+1 identifiers, smallest, largest); None for a molecule without geometry."""
    if e3fp is None:
        return None, None, None, None
    widths_ok = all(len(row) == level + 1 for row in e3fp)
    values = [v for row in e3fp for v in row]
    return len(e3fp), widths_ok, (min(values) if values else None), (max(values) if values else None)


def coords_facts(coords: list | None) -> tuple[int | None, bool | None]:
    """(rows, every row is three finite floats)."""
    if coords is None:
        return None, None
    ok = all(len(xyz) == 3 and all(v is not None and math.isfinite(v) for v in xyz) for xyz in coords)
    return len(coords), ok


def selfies_index_ok(selfies: str | None, atom_index: list | None, heavy_atoms: int | None) -> bool | None:
    """One index per SELFIES token, each -1 or a heavy atom of the molecule."""
    if selfies is None or atom_index is None or heavy_atoms is None:
        return None
    if len(atom_index) != sf.len_selfies(selfies):
        return False
    return all(i == -1 or 0 <= i < heavy_atoms for i in atom_index)


def selfies_roundtrip(selfies: str, inchikey: str) -> bool:
    with rdBase.BlockLogs():
        try:
            mol = Chem.MolFromSmiles(sf.decoder(selfies))
        except sf.DecoderError:
            return False
        return mol is not None and Chem.MolToInchiKey(mol) == inchikey


def molecule_frame(parts: Iterable[pa.Table], params: ContractsParams, level: int | None,
                   roundtrip: set[int] = frozenset(), *, views: frozenset[str] = frozenset(VIEWS)) -> pd.DataFrame:
    """The molecule shards with the derived columns the molecule_shards suite checks, read one part
    at a time: the frame keeps facts about the drawing, the E3FP and the coordinates, never them, so
    its memory is a part's plus about a kilobyte a molecule. `roundtrip`: the row numbers (over the
    whole version) whose SELFIES is decoded (roundtrip_sample). `views`: what the version was built
    to carry (manifest_views); a view left out is expected to be null, and `level` is None without E3FP."""
    return pd.concat(list(molecule_frames(parts, params, level, roundtrip, rows=0, views=views)), ignore_index=True)


def molecule_frames(parts: Iterable[pa.Table], params: ContractsParams, level: int | None,
                    roundtrip: set[int] = frozenset(), rows: int = CHUNK_ROWS, *,
                    views: frozenset[str] = frozenset(VIEWS)) -> Iterator[pd.DataFrame]:
    """molecule_frame in consecutive frames of at least `rows` molecules (whole parts; 0: one frame
    of them all): what a contract holds at 100,000 molecules is then what it holds at 10,000."""
    columns: dict[str, list] = {}
    offset, held, yielded = 0, 0, False
    for part in parts:
        for name, values in _part_columns(part.to_pylist(), level, roundtrip, offset, params, views).items():
            columns.setdefault(name, []).extend(values)
        offset, held = offset + part.num_rows, held + part.num_rows
        if rows and held >= rows:
            yield _molecule_columns_frame(columns)
            columns, held, yielded = {}, 0, True
    if held or not yielded:
        yield _molecule_columns_frame(columns or _part_columns([], level, roundtrip, 0, params, views))


def _molecule_columns_frame(columns: dict[str, list]) -> pd.DataFrame:
    frame = pd.DataFrame(columns)
    frame["cid"] = frame["cid"].astype("int64")
    for column in ("png_width", "png_height", "e3fp_rows", "e3fp_min", "e3fp_max", "coords_rows", "heavy_atoms"):
        frame[column] = frame[column].astype("Int64")
    return frame


def grouped(tables: Iterable[pa.Table], rows: int) -> Iterator[list[pa.Table]]:
    """Consecutive tables in groups of at least `rows` rows (the last may be short; no tables, one
    empty group, so a table with no rows is still one frame)."""
    group: list[pa.Table] = []
    yielded = False
    for table in tables:
        group.append(table)
        if sum(t.num_rows for t in group) >= rows:
            yield group
            group, yielded = [], True
    if group or not yielded:
        yield group


def _part_columns(rows: list[dict], level: int | None, roundtrip: set[int], offset: int, params: ContractsParams,
                  views: frozenset[str]) -> dict:
    columns = {c: [r[c] for r in rows] for c in MOLECULE_COLUMNS}
    # "not drawn" passes the not-null check only where the version leaves the drawing out
    absent = None if "drawing" in views else NOT_DRAWN
    columns["image_png"] = [absent if r["image_png"] is None else "present" for r in rows]
    columns["selfies_atom_index"] = [None if r["selfies_atom_index"] is None else len(r["selfies_atom_index"]) for r in rows]
    columns["flags"] = [None if r["flags"] is None else ",".join(r["flags"]) for r in rows]
    for name in PROPERTY_COLUMNS:
        columns[name] = [None if r["properties"] is None else r["properties"][name] for r in rows]
    facts = {
        ("png_format", "png_width", "png_height", "png_mode"): [png_facts(r["image_png"]) for r in rows],
        ("e3fp_rows", "e3fp_width_ok", "e3fp_min", "e3fp_max"): [e3fp_facts(r["e3fp"], level) for r in rows],
        ("coords_rows", "coords_ok"): [coords_facts(r["coords"]) for r in rows],
    }
    for names, values in facts.items():
        for name, column in zip(names, zip(*values) if values else ([],) * len(names), strict=True):
            columns[name] = list(column)
    # geometry (coords, and E3FP where the version carries it) exactly when there is a conformer
    columns["geometry_present_ok"] = [
        (r["coords"] is not None) == (r["conformer_source"] != "none")
        and (r["e3fp"] is not None) == (r["coords"] is not None and "e3fp" in views) for r in rows
    ]
    columns["selfies_index_ok"] = [
        selfies_index_ok(r["selfies"], r["selfies_atom_index"], (r["properties"] or {}).get("heavy_atoms")) for r in rows
    ]
    columns["selfies_roundtrip_ok"] = [selfies_roundtrip(r["selfies"], r["inchikey"]) if offset + i in roundtrip else None
                                       for i, r in enumerate(rows)]
    columns["description_ok"] = [
        r["split"] not in params.caption_splits or bool((r["description"] or "").strip()) for r in rows
    ]
    return columns


def roundtrip_sample(selfies: list[str | None], params: ContractsParams) -> set[int]:
    """Decoding every SELFIES costs about a millisecond each: a seeded sample of the rows that have
    one (row numbers over the whole version) is checked, the rest left None."""
    candidates = [i for i, s in enumerate(selfies) if s is not None]
    return set(random.Random(params.sample_seed).sample(candidates, min(params.selfies_sample, len(candidates))))


def rejects_frame(table: pa.Table) -> pd.DataFrame:
    return table.to_pandas()


def reject_rates_frame(rejects: pa.Table, input_rows: int, params: ContractsParams) -> pd.DataFrame:
    """One row per reason present (and one for all reasons together): rate over input rows and its threshold."""
    reasons = rejects.column("reason").to_pylist() if rejects.num_rows else []
    counts = pd.Series(reasons, dtype="object").value_counts().to_dict()
    rows = [{"reason": RATE_KEY_ALL, "count": len(reasons), "max_rate": params.max_reject_rate.get(RATE_KEY_ALL, 1.0)}]
    rows += [{"reason": reason, "count": count,
              "max_rate": params.max_reject_rate.get(reason, params.max_reject_rate.get(RATE_KEY_ANY, 1.0))}
             for reason, count in sorted(counts.items())]
    frame = pd.DataFrame(rows, columns=["reason", "count", "max_rate"])
    frame["rate"] = frame["count"] / input_rows if input_rows else 0.0
    return frame


def parts_frame(version_dir: Path, manifest: dict) -> pd.DataFrame:
    """Each file the manifest lists, and each of its counts, beside what is on disk."""
    rows, accepted_on_disk = [], 0
    for entry in manifest["parts"]:
        rows.append(_file_row(version_dir, entry, SHARD_SCHEMA))
        accepted_on_disk += rows[-1]["file_rows"] or 0
    rejects = _file_row(version_dir, {"path": REJECTS, **manifest["rejects"]}, SHARD_REJECTS_SCHEMA)
    rows.append(rejects)
    counts = manifest["counts"]
    rows.append(_count_row("counts.accepted", counts["accepted"], accepted_on_disk))
    rows.append(_count_row("counts.rejected", counts["rejected"], rejects["file_rows"]))
    rows.append(_count_row("counts.input_rows", counts["input_rows"], accepted_on_disk + (rejects["file_rows"] or 0)))
    frame = pd.DataFrame(rows)
    for column in ("manifest_rows", "file_rows"):
        frame[column] = frame[column].astype("Int64")
    return frame


def _file_row(version_dir: Path, entry: dict, schema: pa.Schema) -> dict:
    path = Path(version_dir) / entry["path"]
    row = {"item": entry["path"], "manifest_rows": entry["rows"], "manifest_sha256": entry["sha256"],
           "file_present": path.is_file(), "file_rows": None, "file_sha256": None, "schema_ok": False}
    if not row["file_present"]:
        return row
    row["file_sha256"] = sha256_file(path)
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError):
        return row
    row["file_rows"] = parquet.metadata.num_rows
    row["schema_ok"] = parquet.schema_arrow.remove_metadata().equals(schema.remove_metadata())
    return row


def _count_row(item: str, in_manifest: int, on_disk: int | None) -> dict:
    return {"item": item, "manifest_rows": in_manifest, "manifest_sha256": None, "file_present": True,
            "file_rows": on_disk, "file_sha256": None, "schema_ok": True}


def raw_frames(parts: Iterable[pa.Table], params: ContractsParams, rows: int = CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    """raw_frame in consecutive frames of about `rows` rows (whole parts of the snapshot)."""
    for group in grouped(parts, rows):
        yield raw_frame(pa.concat_tables(group) if group else RAW_SCHEMA.empty_table(), params)


def raw_frame(table: pa.Table, params: ContractsParams) -> pd.DataFrame:
    columns = ["cid", "smiles", "source", "source_uri", "split", "description"]
    frame = table.select(columns).to_pandas()
    frame["cid"] = frame["cid"].astype("int64")
    frame["description_ok"] = [
        split not in params.caption_splits or bool((text or "").strip())
        for split, text in zip(frame["split"], frame["description"])
    ]
    return frame


SFP_FRAME_COLUMNS = ("cid", "table_present", "accounted", "reason", "atoms_match", "bond_length_min", "bond_length_max",
                     "angle_min_deg", "fragments_contiguous")


def sfp_frames(version_dir: Path, molecules: pa.Table, rows: int = CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    """One row per accepted molecule of the version (`molecules`: its cid and smiles columns): is it
    a graph xor a recorded rejection, and do its graph's atoms and geometry make chemical sense; in
    frames of about `rows` rows, the graphs read part by part (a 100,000-molecule table as Python
    objects took 1.7 GB). No table at all is one row that says so."""
    from deepmolm.data.shards.sfp_table import iter_sfp_parts, read_sfp_rejects, sfp_manifest

    if sfp_manifest(version_dir) is None:
        yield pd.DataFrame([{"cid": None, "table_present": False}], columns=SFP_FRAME_COLUMNS)
        return
    smiles = dict(zip(molecules.column("cid").to_pylist(), molecules.column("smiles").to_pylist(), strict=True))
    rejects = read_sfp_rejects(version_dir)
    reasons = dict(zip(rejects.column("cid").to_pylist(), rejects.column("reason").to_pylist(), strict=True))
    graphed, frame = set(), []
    quiet = rdBase.BlockLogs()  # noqa: F841
    for graphs, _ in iter_sfp_parts(version_dir):
        for graph in graphs.to_pylist():
            graphed.add(graph["cid"])
            frame.append(_graph_row(graph, smiles.get(graph["cid"]), reasons.get(graph["cid"])))
        if len(frame) >= rows:
            yield pd.DataFrame(frame, columns=SFP_FRAME_COLUMNS)
            frame = []
    # the molecules without a graph (a rejection, or nothing: not accounted), then the rejections of no molecule
    frame += [{"cid": cid, "table_present": True, "accounted": cid in reasons, "reason": reasons.get(cid)}
              for cid in smiles if cid not in graphed]
    frame += [{"cid": cid, "table_present": True, "accounted": False, "reason": reason}
              for cid, reason in sorted(reasons.items()) if cid not in smiles and cid not in graphed]
    yield pd.DataFrame(frame, columns=SFP_FRAME_COLUMNS)


def _graph_row(graph: dict, smiles: str | None, reason: str | None) -> dict:
    """A graph's row: accounted when it is a molecule of the version's without a rejection besides
    (a graph of no molecule is only that)."""
    if smiles is None:
        return {"cid": graph["cid"], "table_present": True, "accounted": False, "reason": reason}
    mol = Chem.MolFromSmiles(smiles)
    heavy = None if mol is None else sum(1 for a in mol.GetAtoms() if a.GetAtomicNum() > 1)
    lengths, angles = graph["bond_lengths"], graph["angles"]
    return {"cid": graph["cid"], "table_present": True, "accounted": reason is None,
            "reason": reason, "atoms_match": len(graph["atoms"]) == heavy,
            "bond_length_min": min(lengths) if lengths else None,
            "bond_length_max": max(lengths) if lengths else None,
            "angle_min_deg": math.degrees(min(angles)) if angles else None,
            "fragments_contiguous": all(sorted(set(graph[key])) == list(range(len(set(graph[key]))))
                                        for key in graph if key.startswith("fragments_"))}
