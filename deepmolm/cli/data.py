"""`deepmolm data`: ingest, featurize, validate, instructions, refresh, summary."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from deepmolm.cli.common import Common, Exit, PrefectOpt, command, stdout

data_app = typer.Typer(help="Fetch, read and featurize molecules into versioned tables.", no_args_is_help=True)


def _render_counts(summary: dict) -> None:
    if "version" in summary:
        title = f"{summary['dataset']} shard version {summary['version']}"
    else:
        title = f"{summary['source']} snapshot {summary['snapshot']}"
    table = Table(title=title, show_header=False)
    table.add_row("written to", summary["out"])
    table.add_row(
        "rows",
        f"{summary['input_rows']} input = {summary['accepted']} accepted + {summary['rejected']} rejected",
    )
    for reason, count in summary["rejected_by_reason"].items():
        table.add_row(f"  rejected: {reason}", str(count))
    for key in ("parts", "reused", "resumed_parts"):
        if key in summary:
            table.add_row(key.replace("_", " "), str(summary[key]))
    if "seconds" in summary:
        table.add_row("seconds", f"{summary['seconds']:.2f}")
    stdout.print(table)


@command(data_app, "ingest")
def data_ingest(
    common: Common,
    source: Annotated[str, typer.Option(help="chebi20, tsv, pubchem or moses (sources.moses: the file, its first max_rows rows).")],
    split: Annotated[
        list[str] | None,
        typer.Option(help="chebi20: splits to read (repeatable; default from params). tsv: the split label of the file."),
    ] = None,
    path: Annotated[Path | None, typer.Option(help="tsv: a local file in the ChEBI-20 layout (CID<TAB>SMILES<TAB>description).")] = None,
    cids: Annotated[str | None, typer.Option(help="pubchem: CIDs separated by commas or spaces.")] = None,
    cid_file: Annotated[Path | None, typer.Option(help="pubchem: a file with one CID per line.")] = None,
    out: Annotated[Path | None, typer.Option(help="root of raw tables (default: paths.raw_dir).")] = None,
    prefect: PrefectOpt = False,
) -> None:
    """Read a source into a raw-table snapshot: <out>/<source>/<snapshot>/ with Parquet parts,
    rejects.parquet and manifest.json. Every input row is accepted or rejected with a reason."""
    from deepmolm.data.ingest import ingest_request, run_ingest

    with common.errors():
        cfg = common.params
        request = ingest_request(source, splits=split, path=path, cids=cids, cid_file=cid_file, out_root=out)
        summary = common.run(prefect, "flows.ingest:run_request", request, progress=common.progress,
                             inline=lambda: run_ingest(cfg, request, progress=common.progress).as_dict())
    common.emit(summary, _render_counts)


@command(data_app, "featurize")
def data_featurize(
    common: Common,
    input_: Annotated[
        Path, typer.Option("--input", help="a raw-table snapshot, or a source directory (its current snapshot: LATEST).")
    ],
    out: Annotated[Path | None, typer.Option(help="root of shard versions (default: paths.shards_dir).")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="local Dask worker processes (default: featurize.dask.workers).")] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(help="address of a running Dask scheduler to use instead of a local cluster (or $DEEPMOLM_DASK_SCHEDULER)."),
    ] = None,
) -> None:
    """Featurize a raw table into a shard version <out>/<dataset>/<version>/ as a Prefect flow on Dask.

    The version id follows from the input and the params: an interrupted run started again finishes
    the missing parts only, and molecules an earlier version already holds are reused."""
    with common.errors():
        common.params  # fail on bad params before any cluster starts
        from flows.featurize import run_featurize

        summary = run_featurize(input_, out, common.params_file, common.overrides, workers=workers, scheduler=scheduler, progress=common.progress)
    common.emit(summary, _render_counts)


@command(data_app, "validate")
def data_validate(
    common: Common,
    shards: Annotated[Path, typer.Option(help="a shard version directory, or a dataset directory (its current version: LATEST).")],
    report: Annotated[bool, typer.Option(help="also write the data-quality page <reports_dir>/data/index.html.")] = True,
    prefect: PrefectOpt = False,
) -> None:
    """Run the data contracts (Great Expectations suites in data_contracts/) on a shard version.

    Exit 1 when a critical expectation fails, so `dvc repro` stops before training; failed warnings
    are listed and do not change the exit code. Data Docs are updated for every run."""
    from deepmolm.data.contracts.gate import ContractError
    from deepmolm.reports.data_quality import validate_with_report

    with common.errors():
        cfg = common.params
        try:
            summary = common.run(prefect, "flows.validate:run_validate", shards, report=report,
                                 inline=lambda: validate_with_report(shards, cfg, report=report))
        except ContractError as exc:
            raise Exit(2, str(exc)) from None
    common.emit(summary, _render_validation)
    if not summary["success"]:
        raise typer.Exit(1)


@command(data_app, "instructions")
def data_instructions(
    common: Common,
    shards: Annotated[Path, typer.Option(help="a shard version directory, or a dataset directory (its current version: LATEST).")],
    out: Annotated[Path | None, typer.Option(help="root of instruction sets (default: paths.instructions_dir).")] = None,
    prefect: PrefectOpt = False,
) -> None:
    """Build captioning and property-question examples from a shard version, then check them
    against the instruction_examples contract (exit 1 when a critical expectation fails)."""
    from deepmolm.data.contracts.gate import ContractError, build_checked_instructions

    with common.errors():
        cfg = common.params
        try:
            summary = common.run(prefect, "flows.instructions:run_instructions", shards, out,
                                 inline=lambda: build_checked_instructions(shards, out or cfg.paths.instructions_dir, cfg))
        except ContractError as exc:
            raise Exit(2, str(exc)) from None
    common.emit(summary, lambda s: stdout.print(s))
    if not summary["contract"]["success"]:
        raise typer.Exit(1)


def _render_validation(summary: dict) -> None:
    verdict = "[bold green]passed[/]" if summary["success"] else "[bold red]failed[/]"
    table = Table(title=f"data contract {verdict}: {summary['target']}", show_header=False)
    table.add_column()
    table.add_column(overflow="fold")  # paths stay whole
    table.add_row("expectations evaluated", str(summary["evaluated"]))
    for name in summary["failed"]:
        table.add_row("[red]failed (critical)[/]", name)
    for name in summary["warnings"]:
        table.add_row("[yellow]failed (warning)[/]", name)
    table.add_row("Data Docs", str(summary["data_docs"]))
    if "report" in summary:
        table.add_row("report", summary["report"])
    stdout.print(table)


@command(data_app, "refresh")
def data_refresh(
    common: Common,
) -> None:
    """The scheduled refresh, run now: for each of refresh.sources ingest, featurize, validate (with the
    data-quality page), then `dvc commit` of their stages. A Prefect flow (deployment `refresh-dataset`)."""
    from deepmolm.data.contracts.gate import ContractError
    from flows.refresh import run_refresh
    from flows.validate import ContractFailed

    with common.errors():
        common.params
        try:
            summary = run_refresh(common.params_file.resolve().parent, common.params_file.resolve().name, common.overrides)
        except ContractError as exc:
            raise Exit(2, str(exc)) from None
        except ContractFailed as exc:
            raise Exit(1, f"the data contract failed ({exc}); the data-quality page shows why") from None
    common.emit(summary, lambda s: stdout.print(s))


@command(data_app, "summary")
def data_summary(
    common: Common,
    snapshot: Annotated[Path, typer.Argument(help="a raw snapshot or shard version directory, or the directory above it (its current one: LATEST).")],
) -> None:
    """Counts and reject reasons of a raw-table snapshot or a shard version, from its manifest."""
    from deepmolm.data.shards import parts as shards
    from deepmolm.data.sources import raw_table

    with common.errors():
        try:
            where = raw_table.resolve_snapshot(snapshot)
            manifest = raw_table.read_manifest(where)
        except FileNotFoundError:
            where = shards.resolve_version(snapshot)
            manifest = shards.read_manifest(where)
    if manifest["table"] == "molecules":
        names = {"dataset": manifest["dataset"], "version": manifest["version"], "parts": len(manifest["parts"])}
    else:
        names = {"source": manifest["source"], "snapshot": manifest["snapshot"]}
    summary = {**names, "out": str(where), **manifest["counts"], "rejected_by_reason": manifest["rejected_by_reason"]}
    common.emit(summary, _render_counts)
