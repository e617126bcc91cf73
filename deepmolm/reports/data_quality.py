"""The data-quality page of a shard version: counts, distributions, a gallery, the contract's verdict.

Written to `<reports_dir>/data/index.html` with its plots and thumbnails as files beside it (no CDN,
so it opens offline and from a CI artifact), plus `summary.json` with the same figures for DVC
metrics and scripts. The page marks itself once its images have loaded (`data-images-loaded` on
<body>, "loaded/total"), which is what the headless-browser test reads.
"""

from __future__ import annotations

import html
import io
import json
import random
import shutil
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from rdkit import Chem

from deepmolm.config import VIEWS, Params
from deepmolm.data.contracts.frames import PROPERTY_COLUMNS
from deepmolm.data.contracts.gate import ContractResult, validate_shard_version
from deepmolm.data.featurize.render import draw_png
from deepmolm.data.shards.parts import iter_shard_parts, manifest_views, read_manifest, read_shard_rejects
from deepmolm.data.sources.raw_table import read_manifest as read_raw_manifest
from deepmolm.reports.html import IMAGES_LOADED_SCRIPT, PAGE_STYLE
from deepmolm.runtime.run_log import resolve_recorded
from deepmolm.store.versions import MANIFEST

TEXT_COLUMNS = ["cid", "split", "smiles", "description", "conformer_source", "flags"]  # a gallery item's
FACT_COLUMNS = ["split", "smiles", "description", "flags", "e3fp", "properties"]  # read one part at a time
ID_LABELS = {"moses": "MOSES row"}  # what a record's cid is where it is not a PubChem CID


@dataclass
class VersionFacts:
    """What the page needs from a version, gathered one part at a time: counters and numbers (8 bytes
    a value), never rows, so memory stays flat as the version grows."""
    levels: int
    usage: list[Counter] = field(default_factory=list)  # atoms per E3FP identifier, per level
    without_shell: list[int] = field(default_factory=list)  # atoms with no identifier at a level
    series: dict[str, array] = field(default_factory=dict)  # the values behind each distribution
    splits: Counter = field(default_factory=Counter)
    flagged: bytearray = field(default_factory=bytearray)  # 1 per row with a flag, in version order

    def __post_init__(self) -> None:
        self.usage = [Counter() for _ in range(self.levels)]
        self.without_shell = [0] * self.levels
        self.series = {name: array("d") for name in ("smiles_length", "description_words", *PROPERTY_COLUMNS)}

    def add(self, rows: list[dict]) -> None:
        for r in rows:
            for atom in r["e3fp"] or []:
                for level, identifier in enumerate(atom):
                    if identifier >= 0:
                        self.usage[level][identifier] += 1
                    else:
                        self.without_shell[level] += 1
            self.series["smiles_length"].append(len(r["smiles"]))
            self.series["description_words"].append(len((r["description"] or "").split()))
            for name in PROPERTY_COLUMNS:
                if r["properties"][name] is not None:
                    self.series[name].append(r["properties"][name])
            self.splits[r["split"] or "none"] += 1
            self.flagged.append(1 if r["flags"] else 0)


def version_facts(version_dir: Path, levels: int) -> VersionFacts:
    facts = VersionFacts(levels)
    for part in iter_shard_parts(version_dir, columns=FACT_COLUMNS):
        facts.add(part.to_pylist())
    return facts


def ingest_counts(version_dir: Path, manifest: dict) -> dict | None:
    """What the raw snapshot the version was built from read and rejected (a source's rejections,
    e.g. MOSES's evaluated molecules, happen there); None where that snapshot is not beside it."""
    raw_dir = resolve_recorded(manifest["input"]["raw_snapshot_dir"], version_dir)
    if not (raw_dir / MANIFEST).is_file():
        return None
    raw = read_raw_manifest(raw_dir)
    return {**raw["counts"], "rejected_by_reason": raw["rejected_by_reason"]}


def data_summary(rejects: pa.Table, manifest: dict, contract: ContractResult | None, facts: VersionFacts,
                 ingest: dict | None = None) -> dict:
    """The figures the page shows, as plain JSON data."""
    input_rows, views = manifest["counts"]["input_rows"], manifest_views(manifest)
    summary = {
        "dataset": manifest["dataset"],
        "version": manifest["version"],
        "counts": manifest["counts"],
        "reject_rate": round(manifest["counts"]["rejected"] / input_rows, 6) if input_rows else 0.0,
        "rejected_by_reason": manifest["rejected_by_reason"],
        "conformer_sources": manifest["conformer_sources"],
        "flags": manifest["flags"],
        "splits": dict(sorted(facts.splits.items())),
        "distributions": {name: _stats(values) for name, values in facts.series.items()},
        "e3fp": {  # None: the version's source leaves the E3FP view out
            "bits": manifest["params"]["featurize.e3fp"]["bits"],
            "distinct_identifiers_per_level": [len(c) for c in facts.usage],
            "atoms_without_shell_per_level": list(facts.without_shell),
        } if "e3fp" in views else None,
        "rejects": rejects.num_rows,
        "views": sorted(views),
    }
    if ingest is not None:
        summary["ingest"] = ingest
    if contract is not None:
        summary["contract"] = {key: getattr(contract, key) for key in ("success", "evaluated", "failed", "warnings")}
    return summary


def _stats(values: list) -> dict:
    if not values:
        return {"n": 0}
    array = np.asarray(values, dtype=float)
    q = np.percentile(array, [5, 50, 95])
    return {"n": int(array.size), "min": float(array.min()), "p05": float(q[0]), "median": float(q[1]),
            "p95": float(q[2]), "max": float(array.max()), "mean": round(float(array.mean()), 4)}


def _plots(series: dict[str, list], summary: dict, manifest: dict, usage: list[Counter], out: Path) -> list[tuple[str, str]]:
    """PNG files under out/plots/; returns (file, caption) pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []

    def save(fig, name: str, caption: str) -> None:
        fig.tight_layout()
        fig.savefig(out / "plots" / name, dpi=96)
        plt.close(fig)
        made.append((f"plots/{name}", caption))

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, (name, label) in zip(axes, [("heavy_atoms", "heavy atoms"), ("smiles_length", "SMILES length (characters)"),
                                        ("description_words", "description length (words)")]):
        ax.hist(series[name], bins=50, color="#3b6ea5")
        ax.set_xlabel(label)
        ax.set_ylabel("molecules")
    save(fig, "sizes.png", "Molecule size, SMILES length and description length")

    fig, axes = plt.subplots(2, 5, figsize=(15, 5.5))
    for ax, name in zip(axes.flat, PROPERTY_COLUMNS):
        ax.hist(series[name], bins=40, color="#5a9367")
        ax.set_title(name, fontsize=10)
    save(fig, "properties.png", "Computed properties (RDKit)")

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for ax, (counts, title, colour) in zip(axes, [
        (manifest["conformer_sources"], "conformer source", "#a56b3b"),
        (manifest["flags"] or {"(none)": 0}, "flags", "#7a5aa5"),
        (manifest["rejected_by_reason"] or {"(no rejects)": 0}, "reject reasons", "#a53b3b"),
    ]):
        ax.barh(list(counts), list(counts.values()), color=colour)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("molecules")
        if not any(counts.values()):  # nothing to count: a 0..1 axis, not matplotlib's +-0.04 around zero
            ax.set_xlim(0, 1)
            ax.set_xticks([0])
    save(fig, "mix.png", "Conformer sources, flags and reject reasons")

    if summary["e3fp"] is None:
        return made
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.4))
    levels = len(usage)
    for level, counter in enumerate(usage):
        frequencies = sorted(counter.values(), reverse=True)
        if frequencies:
            axes[0].loglog(range(1, len(frequencies) + 1), frequencies, label=f"level {level}")
    axes[0].set_xlabel("identifier rank")
    axes[0].set_ylabel("atoms using it")
    axes[0].legend(fontsize=8)
    axes[1].bar([f"level {i}" for i in range(levels)], summary["e3fp"]["distinct_identifiers_per_level"], color="#3b8ea5")
    axes[1].axhline(summary["e3fp"]["bits"], color="grey", linestyle="--", linewidth=1)
    axes[1].set_title(f"distinct identifiers of {summary['e3fp']['bits']} bits", fontsize=10)
    save(fig, "e3fp.png", "E3FP identifier usage per level")
    return made


def _gallery(version_dir: Path, flagged: bytearray, params: Params, out: Path) -> list[dict]:
    """A seeded sample of molecules, flagged ones first, as thumbnails with their text."""
    size = params.report.gallery_size
    rng = random.Random(params.report.gallery_seed)
    chosen = rng.sample([i for i, f in enumerate(flagged) if f], min(sum(flagged), size // 3))
    plain = [i for i, f in enumerate(flagged) if not f]
    chosen += rng.sample(plain, min(len(plain), size - len(chosen)))
    items = []
    for i, row in sorted(_rows_at(version_dir, chosen, [*TEXT_COLUMNS, "image_png"]).items()):
        name, side = f"gallery/{row['cid']}.png", params.report.thumbnail_px
        # a version without drawings (its source leaves them out) is drawn here, at the thumbnail's size
        png = row["image_png"] or draw_png(Chem.MolFromSmiles(row["smiles"]), size=side, bond_line_width=1.0, padding=0.05)
        with Image.open(io.BytesIO(png)) as image:
            image.thumbnail((side, side))
            image.save(out / name, optimize=True)
        items.append({"cid": row["cid"], "image": name, "smiles": row["smiles"], "description": row["description"] or "",
                      "flags": row["flags"], "conformer_source": row["conformer_source"]})
    return items


def _rows_at(version_dir: Path, indices: list[int], columns: list[str]) -> dict[int, dict]:
    """The given rows (indices over the whole version), reading only the parts that hold them."""
    wanted, out, start = sorted(indices), {}, 0
    for part in read_manifest(version_dir)["parts"]:
        stop = start + part["rows"]
        rows = [i - start for i in wanted if start <= i < stop]
        if rows:
            table = pq.read_table(Path(version_dir) / part["path"], columns=columns)
            out.update({start + r: table.slice(r, 1).to_pylist()[0] for r in rows})
        start = stop
    return out


def write_data_report(version_dir: Path, params: Params, contract: ContractResult | None = None,
                      out: Path | None = None) -> Path:
    """Write the page and summary.json for one shard version; returns the page's path."""
    version_dir = Path(version_dir)
    out = Path(out) if out else params.paths.reports_dir / "data"
    manifest = read_manifest(version_dir)
    rejects = read_shard_rejects(version_dir)
    for sub in ("plots", "gallery"):
        shutil.rmtree(out / sub, ignore_errors=True)
        (out / sub).mkdir(parents=True, exist_ok=True)
    e3fp = manifest["params"].get("featurize.e3fp")
    facts = version_facts(version_dir, e3fp["level"] + 1 if e3fp else 0)
    summary = data_summary(rejects, manifest, contract, facts, ingest_counts(version_dir, manifest))
    plots = _plots(facts.series, summary, manifest, facts.usage, out)
    gallery = _gallery(version_dir, facts.flagged, params, out)
    summary["plots"] = [path for path, _ in plots]
    summary["gallery"] = [item["cid"] for item in gallery]
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    docs = _relative_docs(contract, out)
    page = out / "index.html"
    page.write_text(_page(summary, plots, gallery, rejects.slice(0, 50).to_pylist(), docs), encoding="utf-8")
    return page


def _relative_docs(contract: ContractResult | None, out: Path) -> str | None:
    if contract is None or not contract.data_docs:
        return None
    target = Path(contract.data_docs.removeprefix("file://"))
    try:
        return str(target.relative_to(out.resolve()))
    except ValueError:
        return contract.data_docs


def _page(summary: dict, plots: list[tuple[str, str]], gallery: list[dict], rejects: list[dict], docs: str | None) -> str:
    e = html.escape
    counts = summary["counts"]
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>Data quality: {e(summary['dataset'])} {e(summary['version'])}</title><style>{PAGE_STYLE}</style></head><body>",
             f"<h1>Data quality: {e(summary['dataset'])} shard version <code>{e(summary['version'])}</code></h1>"]
    contract = summary.get("contract")
    if contract:
        verdict = "<span class='ok'>passed</span>" if contract["success"] else "<span class='bad'>failed</span>"
        parts.append(f"<p>Data contract {verdict}: {contract['evaluated']} expectations evaluated, "
                     f"{len(contract['failed'])} critical failures, {len(contract['warnings'])} warnings."
                     + (f" <a href='{e(docs)}'>Great Expectations Data Docs</a>" if docs else "") + "</p>")
        items = [f"<li class='bad'>{e(n)}</li>" for n in contract["failed"]]
        items += [f"<li class='warn'>{e(n)} (warning)</li>" for n in contract["warnings"]]
        if items:
            parts.append(f"<ul id='failed-expectations'>{''.join(items)}</ul>")
    parts.append("<h2>Counts</h2><table class='counts'>")
    if ingest := summary.get("ingest"):
        parts.append(f"<tr><td>rows read from the source</td><td>{ingest['input_rows']}</td></tr>"
                     f"<tr><td>rejected at ingest</td><td>{ingest['rejected']}</td></tr>")
        for reason, count in ingest["rejected_by_reason"].items():
            parts.append(f"<tr><td>&nbsp;&nbsp;rejected at ingest: {e(reason)}</td><td>{count}</td></tr>")
    parts.append(f"<tr><td>input rows</td><td>{counts['input_rows']}</td></tr>"
                 f"<tr><td>accepted</td><td>{counts['accepted']}</td></tr>"
                 f"<tr><td>rejected</td><td>{counts['rejected']} ({summary['reject_rate']:.2%})</td></tr>")
    for reason, count in summary["rejected_by_reason"].items():
        parts.append(f"<tr><td>&nbsp;&nbsp;rejected: {e(reason)}</td><td>{count}</td></tr>")
    for split, count in summary["splits"].items():
        parts.append(f"<tr><td>split {e(split)}</td><td>{count}</td></tr>")
    parts.append("</table><h2>Distributions</h2>")
    for path, caption in plots:
        parts.append(f"<figure><img src='{e(path)}' alt='{e(caption)}'><figcaption>{e(caption)}</figcaption></figure>")
    parts.append("<h2>Gallery</h2>")
    if missing := [view for view in VIEWS if view not in summary["views"]]:
        parts.append(f"<p id='views-left-out'>This source's records leave out {e(' and '.join(missing))} "
                     "(params.yaml <code>featurize.views</code>); "
                     + ("the drawings below are made for this page from the SMILES." if "drawing" in missing else "")
                     + "</p>")
    parts.append("<div class='gallery' id='gallery'>")
    label = ID_LABELS.get(summary["dataset"], "CID")
    for item in gallery:
        flags = "".join(f"<span class='flag'>{e(f)}</span>" for f in item["flags"])
        parts.append(f"<div class='card'><img src='{e(item['image'])}' alt='{label} {item['cid']}'>"
                     f"<div><b>{label} {item['cid']}</b> · conformer {e(item['conformer_source'])} {flags}</div>"
                     f"<div class='smiles'>{e(item['smiles'])}</div><div>{e(item['description'][:400])}</div></div>")
    parts.append("</div>")
    if rejects:
        parts.append(f"<h2>Rejected molecules</h2><table class='counts'><tr><th>{label}</th><th>reason</th><th>detail</th><th>SMILES</th></tr>")
        for r in rejects:
            parts.append(f"<tr><td>{r['cid']}</td><td>{e(r['reason'])}</td><td>{e(r['detail'][:200])}</td>"
                         f"<td class='smiles'>{e((r['raw_smiles'] or '')[:120])}</td></tr>")
        parts.append("</table>")
    parts.append(f"<script>{IMAGES_LOADED_SCRIPT}</script></body></html>")
    return "\n".join(parts)


def validate_with_report(shards: Path, params: Params, *, report: bool = True) -> dict:
    """The contract of a shard version, then (pass or fail: a failed refresh is when people look) its page."""
    result = validate_shard_version(Path(shards), params)
    summary = result.as_dict()
    if report:
        summary["report"] = str(write_data_report(Path(result.target), params, result))
    return summary
