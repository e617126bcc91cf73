"""Data contracts: the Great Expectations suites of data_contracts/ run against a shard version.

A file-backed GE project under `<reports_dir>/data/gx` holds one pandas data source, an asset,
validation definition and checkpoint per table, and the Data Docs site that every run updates. The
suites are re-read from data_contracts/ on each run, so the files there are the only definition.
Severity is GE's own: a failed `critical` expectation fails the contract (non-zero exit, so `dvc
repro` stops before training), a failed `warning` is reported and does not.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from deepmolm.config import Params
from deepmolm.data.contracts.frames import (
    CHUNK_ROWS,
    molecule_frames,
    parts_frame,
    raw_frames,
    reject_rates_frame,
    rejects_frame,
    roundtrip_sample,
    sfp_frames,
)
from deepmolm.data.shards.parts import (
    iter_shard_parts,
    manifest_views,
    read_manifest,
    read_shard_rejects,
    read_shards,
    resolve_version,
)
from deepmolm.data.sources.raw_table import read_manifest as read_raw_manifest
from deepmolm.data.sources.raw_table import iter_raw_parts
from deepmolm.runtime.run_log import resolve_recorded
from deepmolm.store.versions import MANIFEST

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")  # no usage statistics sent from here

SHARD_TABLES = ("molecule_shards", "shard_rejects", "reject_rates", "shard_parts", "raw_table", "sfp_graphs")
TABLES = (*SHARD_TABLES, "instruction_examples")
DATA_SOURCE = "deepmolm"
# Expectations decided row by row (or per column dtype): checked chunk by chunk on a large table.
ROW_EXPECTATIONS = frozenset({
    "expect_column_values_to_not_be_null", "expect_column_values_to_be_in_set", "expect_column_values_to_be_between",
    "expect_column_value_lengths_to_be_between", "expect_column_values_to_match_regex",
    "expect_column_values_to_be_of_type", "expect_column_pair_values_to_be_equal",
    "expect_column_pair_values_a_to_be_greater_than_b",
})
UNIQUE = "expect_column_values_to_be_unique"


@dataclass
class Chunks:
    """A table as consecutive frames: `frames()` reads them again from the start each time it is called."""

    frames: Callable[[], Iterable[pd.DataFrame]]


class ContractError(ValueError):
    """A suite file or a table that cannot be validated at all (not a failed expectation)."""


@dataclass
class ContractResult:
    success: bool
    evaluated: int
    failed: list[str]  # critical expectations that failed, as "<table>.<name>"
    warnings: list[str]  # warning expectations that failed
    tables: dict[str, dict] = field(default_factory=dict)
    data_docs: str | None = None
    target: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def load_suite(suites_dir: Path, table: str) -> dict:
    """The suite file of `table`, checked so that no expectation is silently dropped by GE."""
    path = Path(suites_dir) / f"{table}.json"
    if not path.is_file():
        raise ContractError(f"no expectation suite for table {table!r}: {path} is missing")
    try:
        suite = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ContractError(f"{path}: not JSON ({exc})") from exc
    if suite.get("name") != table:
        raise ContractError(f"{path}: suite name is {suite.get('name')!r}, expected {table!r}")
    names = [(exp.get("meta") or {}).get("name") for exp in suite.get("expectations", [])]
    for position, name in enumerate(names):
        if not name:
            raise ContractError(f"{path}: expectation {position} has no meta.name")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ContractError(f"{path}: expectation names used twice: {', '.join(duplicates)}")
    return suite


class ContractRunner:
    """The GE project, created on first use; one checkpoint per table."""

    def __init__(self, gx_root: Path, suites_dir: Path):
        import great_expectations as gx

        self._gx = gx
        self.suites_dir = Path(suites_dir)
        self._validated: list = []  # the identifiers of the current run's validation results
        Path(gx_root).mkdir(parents=True, exist_ok=True)
        self.context = gx.get_context(mode="file", project_root_dir=str(gx_root))
        # GE's per-metric tqdm bars would flood stderr (and the progress of whoever calls us)
        from great_expectations.data_context.types.base import ProgressBarsConfig

        bars = self.context.variables.progress_bars  # a dict once read back from the project's YAML
        if (bars.get("globally") if isinstance(bars, dict) else getattr(bars, "globally", True)) is not False:
            self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
            self.context.variables.save()
        try:
            self._source = self.context.data_sources.get(DATA_SOURCE)
        except (KeyError, ValueError):
            self._source = self.context.data_sources.add_pandas(DATA_SOURCE)

    def _checkpoint(self, name: str, spec: dict, expectations: list[dict]):
        gx = self._gx
        suite = gx.ExpectationSuite(name=name, expectations=expectations, meta=spec.get("meta"))
        if len(suite.expectations) != len(expectations):
            raise ContractError(f"{self.suites_dir / (spec['name'] + '.json')}: Great Expectations refused "
                                f"{len(expectations) - len(suite.expectations)} expectation(s); see its log")
        suite = self.context.suites.add_or_update(suite)
        # get_asset, not .assets: only the former binds the asset to its data source (and context)
        try:
            asset = self._source.get_asset(name)
        except LookupError:
            asset = self._source.add_dataframe_asset(name)
        try:
            batch = asset.get_batch_definition("whole")
        except KeyError:
            batch = asset.add_batch_definition_whole_dataframe("whole")
        definition = self.context.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=name, data=batch, suite=suite))
        return self.context.checkpoints.add_or_update(gx.Checkpoint(
            name=name,
            validation_definitions=[definition],
            actions=[],  # Data Docs are built once per contract run (`run`), not once per checkpoint run
            result_format={"result_format": "SUMMARY", "partial_unexpected_count": 5},
        ))

    def _checks(self, name: str, spec: dict, expectations: list[dict], frame: pd.DataFrame, parameters: dict) -> list:
        if not expectations:
            return []
        outcome = self._checkpoint(name, spec, expectations).run(batch_parameters={"dataframe": frame},
                                                                 expectation_parameters=parameters)
        self._validated += list(outcome.run_results)
        return [check for validation in outcome.run_results.values() for check in validation.results]

    def _build_data_docs(self) -> None:
        """The pages of this run's validation results and suites, and the index, rendered once: GE's
        per-checkpoint action rendered the index again after every table and chunk."""
        suites = list({result.expectation_suite_identifier.name: result.expectation_suite_identifier
                       for result in self._validated}.values())
        self.context.build_data_docs(resource_identifiers=[*self._validated, *suites])

    def run(self, frames: dict[str, pd.DataFrame | Chunks], parameters: dict[str, Any], target: str) -> ContractResult:
        result = ContractResult(success=True, evaluated=0, failed=[], warnings=[], target=target)
        self._validated = []
        for table, frame in frames.items():
            spec = load_suite(self.suites_dir, table)
            if isinstance(frame, Chunks):
                rows, outcomes = self._run_chunks(table, spec, frame, parameters)
            else:
                rows = len(frame)
                outcomes = [_outcome(check) for check in self._checks(table, spec, spec["expectations"], frame, parameters)]
            summary = {"rows": rows, "evaluated": 0, "failed": [], "warnings": [], "details": {}}
            for name, severity, success, detail in outcomes:
                summary["evaluated"] += 1
                if not success:
                    summary["failed" if severity == "critical" else "warnings"].append(name)
                    summary["details"][name] = detail
            result.evaluated += summary["evaluated"]
            result.failed += [f"{table}.{n}" for n in summary["failed"]]
            result.warnings += [f"{table}.{n}" for n in summary["warnings"]]
            result.tables[table] = summary
        result.success = not result.failed
        self._build_data_docs()
        sites = self.context.get_docs_sites_urls()
        result.data_docs = sites[0]["site_url"] if sites else None
        return result

    def _run_chunks(self, table: str, spec: dict, chunks: Chunks, parameters: dict) -> tuple[int, list[tuple]]:
        """A table too large to hold as one frame: its row expectations run chunk by chunk (their
        counts summed, `mostly` applied to the whole), the others (uniqueness, row count) once on the
        columns they name, kept from every chunk."""
        per_row = [e for e in spec["expectations"] if e["type"] in ROW_EXPECTATIONS]
        whole = [e for e in spec["expectations"] if e["type"] not in ROW_EXPECTATIONS]
        named = sorted({c for e in whole for key in ("column", "column_A", "column_B") if (c := e["kwargs"].get(key))})
        # a text column only uniqueness reads is kept as 64-bit hashes (500,000 example ids: 4 MB, not 160)
        hashed = {c for c in named if all(e["type"] == UNIQUE for e in whole if e["kwargs"].get("column") == c)}
        kept, counts, rows = [], {}, 0
        for chunk in chunks.frames():
            rows += len(chunk)
            keys = chunk[named or list(chunk.columns[:1])].copy()
            for column in hashed & {c for c in named if not pd.api.types.is_numeric_dtype(chunk[c])}:
                keys[column] = _hashes(chunk[column])
            kept.append(keys)
            for check in self._checks(f"{table}.rows", spec, per_row, chunk, parameters):
                name, severity, success, detail = _outcome(check)
                mostly = check.expectation_config.kwargs.get("mostly")
                total = counts.setdefault(name, {"severity": severity, "success": True, "detail": None,
                                                 "unexpected": 0, "counted": 0, "mostly": mostly})
                got = check.result or {}
                total["unexpected"] += got.get("unexpected_count") or 0
                total["counted"] += (got.get("element_count") or 0) - (got.get("missing_count") or 0)
                if not success and total["detail"] is None:
                    total["detail"] = detail
                # with `mostly` the verdict is the total's; a check that raised fails either way
                total["success"] &= success or (total["mostly"] is not None and "exception" not in (detail or {}))
        outcomes = []
        for name, total in counts.items():
            success = total["success"]
            if total["mostly"] is not None and total["counted"]:
                success = success and 1 - total["unexpected"] / total["counted"] >= total["mostly"]
            detail = total["detail"]
            if detail is not None:
                detail = {**detail, "unexpected_count": total["unexpected"], "chunks": len(kept)}
            outcomes.append((name, total["severity"], success, detail))
        frame = pd.concat(kept, ignore_index=True) if kept else pd.DataFrame(columns=named)
        for check in self._checks(table, spec, whole, frame, parameters):
            name, severity, success, detail = _outcome(check)
            column = check.expectation_config.kwargs.get("column")
            if detail is not None and column in hashed and frame[column].dtype == "int64":
                detail["partial_unexpected_list"] = _repeated_values(chunks, column, frame[column])
            outcomes.append((name, severity, success, detail))
        order = [e["meta"]["name"] for e in spec["expectations"]]
        return rows, sorted(outcomes, key=lambda outcome: order.index(outcome[0]))


def _hashes(values: pd.Series) -> pd.Series:
    return pd.Series(pd.util.hash_pandas_object(values, index=False).to_numpy().view("int64"), index=values.index)


def _repeated_values(chunks: Chunks, column: str, hashes: pd.Series, limit: int = 5) -> list:
    """The first values whose hash occurs twice, read again from the table (the kept frame has hashes)."""
    repeated = set(hashes[hashes.duplicated(keep=False)].tolist())
    found: list = []
    for chunk in chunks.frames():
        values = chunk[column]
        found += values[_hashes(values).isin(repeated)].tolist()
        if len(found) >= limit:
            break
    return found[:limit]


def _outcome(check) -> tuple[str, str, bool, dict | None]:
    config = check.expectation_config
    severity = str(getattr(config.severity, "value", config.severity))
    return config.meta["name"], severity, bool(check.success), None if check.success else _failure_detail(check)


def _failure_detail(check) -> dict:
    detail = {"type": check.expectation_config.type}
    if check.exception_info and check.exception_info.get("raised_exception"):
        detail["exception"] = str(check.exception_info.get("exception_message"))[:300]
    for key in ("observed_value", "unexpected_count", "unexpected_percent", "partial_unexpected_list"):
        value = (check.result or {}).get(key)
        if value is not None:
            detail[key] = json.loads(json.dumps(value, default=_plain))
    return detail


def _plain(value: Any) -> Any:
    """numpy scalars (GE reports them) as Python numbers, anything else as text."""
    return value.item() if hasattr(value, "item") else str(value)


def shard_frames(version_dir: Path, params: Params) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """The tables a shard version's contract checks, and the suite parameters they use."""
    manifest = read_manifest(version_dir)
    contracts = params.contracts
    views = manifest_views(manifest)
    e3fp, render = manifest["params"].get("featurize.e3fp"), manifest["params"].get("featurize.render")
    level = e3fp["level"] if e3fp else None
    rejects = read_shard_rejects(version_dir)
    molecules = read_shards(version_dir, columns=["cid", "smiles", "selfies"])  # the rest part by part
    sample = roundtrip_sample(molecules.column("selfies").to_pylist(), contracts)
    frames = {
        "molecule_shards": Chunks(lambda: molecule_frames(iter_shard_parts(version_dir), contracts, level, sample,
                                                             views=views)),
        "shard_rejects": rejects_frame(rejects),
        "reject_rates": reject_rates_frame(rejects, manifest["counts"]["input_rows"], contracts),
        "shard_parts": parts_frame(version_dir, manifest),
    }
    parameters = {
        "manifest_accepted": manifest["counts"]["accepted"],
        "manifest_rejected": manifest["counts"]["rejected"],
        # a version without the view has no values for its expectations to read
        "e3fp_max_id": e3fp["bits"] - 1 if e3fp else 0,
        "image_size": render["size"] if render else 0,
        "known_reasons": sorted(contracts.known_reject_reasons),
        "max_smiles_chars": params.ingest.max_smiles_chars,
    }
    if params.mumo.sfp:
        frames["sfp_graphs"] = Chunks(lambda: sfp_frames(version_dir, molecules))
    raw_dir = resolve_recorded(manifest["input"]["raw_snapshot_dir"], version_dir)  # relative to the version
    if (raw_dir / MANIFEST).is_file():
        frames["raw_table"] = Chunks(lambda: raw_frames(iter_raw_parts(raw_dir), contracts))
        parameters["raw_rows"] = read_raw_manifest(raw_dir)["counts"]["accepted"]
    return frames, parameters


def validate_shard_version(path: Path, params: Params, *, gx_root: Path | None = None) -> ContractResult:
    """Run every shard-version suite; `path` is a version directory or a dataset directory (its newest)."""
    version_dir = resolve_version(Path(path))
    frames, parameters = shard_frames(version_dir, params)
    runner = ContractRunner(gx_root or params.paths.reports_dir / "data" / "gx", params.contracts.suites_dir)
    return runner.run(frames, parameters, target=str(version_dir))


INSTRUCTION_COLUMNS = ["example_id", "cid", "split", "task", "property", "prompt", "response", "answer_value"]


def validate_instructions(directory: Path, params: Params, *, gx_root: Path | None = None) -> ContractResult:
    """The instruction_examples suite on an instruction set written by deepmolm/data/instructions.py."""
    from deepmolm.data.instructions import INSTRUCTION_SCHEMA, iter_examples

    def frames():
        empty = True
        for batch in iter_examples(directory, INSTRUCTION_COLUMNS, rows=CHUNK_ROWS):
            empty = False
            yield batch.to_pandas()
        if empty:  # a set without examples is still checked, as one empty frame
            yield INSTRUCTION_SCHEMA.empty_table().select(INSTRUCTION_COLUMNS).to_pandas()

    # a GE project of its own: the shard contract's project is another DVC stage's output
    runner = ContractRunner(gx_root or params.paths.reports_dir / "instructions" / "gx", params.contracts.suites_dir)
    return runner.run({"instruction_examples": Chunks(frames)}, {}, target=str(directory))


def build_checked_instructions(shards: Path, out_root: Path, params: Params) -> dict:
    """Build (or reuse) the instruction set of a shard version, then check it: its summary with
    "contract" (success, evaluated, failed, warnings)."""
    from deepmolm.data.instructions import build_instructions

    summary = build_instructions(Path(shards), Path(out_root), params.instructions)
    contract = validate_instructions(Path(summary["out"]), params).as_dict()
    summary["contract"] = {k: contract[k] for k in ("success", "evaluated", "failed", "warnings")}
    return summary
