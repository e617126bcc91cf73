"""`deepmolm`: the command line of the pipeline.

Conventions every command follows: `--params FILE` and `-S key=value` choose the configuration;
`--quiet` silences progress bars; `--json` prints one JSON object as the last line of stdout (the
interface for scripts). Exit codes: 0 done (bad rows are rejections, not failures), 1 unusable input
or data that fails its contract, 2 bad usage or configuration.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console
from rich.table import Table

from deepmolm import __version__
from deepmolm.config import DEFAULT_PARAMS, ConfigError, Params, load_params

app = typer.Typer(
    name="deepmolm",
    help="Public molecule databases -> featurized shards -> trained, evaluated molecule-text models.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
data_app = typer.Typer(help="Fetch, read and featurize molecules into versioned tables.", no_args_is_help=True)
train_app = typer.Typer(
    help="Stage 1 (alignment) and stage 2 (instruction tuning) on Ray Train, locally or on a Ray cluster.",
    no_args_is_help=True,
)
eval_app = typer.Typer(help="Caption metrics (MolT5 protocol), property QA and the retrieval baseline.", no_args_is_help=True)
report_app = typer.Typer(
    help="The pipeline's report page (the data-quality page comes with `data validate`).",
    no_args_is_help=True,
)
config_app = typer.Typer(help="Inspect the resolved configuration.", no_args_is_help=True)
model_app = typer.Typer(help="The DeepMoLM model: sizes of the presets.", no_args_is_help=True)
mumo_app = typer.Typer(help="MuMo: structural fusion and late injection, for property prediction.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")
app.add_typer(report_app, name="report")
app.add_typer(config_app, name="config")
app.add_typer(model_app, name="model")
app.add_typer(mumo_app, name="mumo")

stdout = Console()
stderr = Console(stderr=True)

ParamsOpt = Annotated[Path, typer.Option("--params", help="params file (YAML).", show_default=True)]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("-S", "--set", metavar="KEY=VALUE", help="override one param, e.g. -S ingest.rows_per_part=1000; repeatable."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON summary object as the last stdout line.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars.")]
InstructionsOpt = Annotated[
    Path | None,
    typer.Option(help="an instruction set, or a directory of sets (the current one: LATEST) (default: paths.instructions_dir)."),
]


class _Exit(Exception):
    def __init__(self, code: int, message: str):
        self.code, self.message = code, message


@contextmanager
def _command(as_json: bool) -> Iterator[None]:
    """Turn the library's errors into a clear message and an exit code (and a JSON error object)."""
    from deepmolm.data.sources.errors import SourceError

    try:
        try:
            yield
        except ConfigError as exc:
            raise _Exit(2, str(exc)) from None
        except (SourceError, FileNotFoundError) as exc:
            raise _Exit(1, str(exc)) from None
    except _Exit as exc:
        stderr.print(f"[bold red]error:[/] {exc.message}", highlight=False, soft_wrap=True)
        if as_json:
            print(json.dumps({"success": False, "error": exc.message}))
        raise typer.Exit(exc.code) from None


def _params(path: Path, overrides: list[str] | None) -> Params:
    return load_params(path, overrides or ())


def _emit(summary: dict, as_json: bool, render: Callable[[dict], None]) -> None:
    if as_json:
        print(json.dumps(summary, sort_keys=False, default=str))
    else:
        render(summary)


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


@app.callback(invoke_without_command=True)
def _main(version: Annotated[bool, typer.Option("--version", help="print the version and exit.")] = False) -> None:
    if version:
        print(__version__)
        raise typer.Exit()


@data_app.command("ingest")
def data_ingest(
    source: Annotated[str, typer.Option(help="chebi20, tsv or pubchem.")],
    split: Annotated[
        list[str] | None,
        typer.Option(help="chebi20: splits to read (repeatable; default from params). tsv: the split label of the file."),
    ] = None,
    path: Annotated[Path | None, typer.Option(help="tsv: a local file in the ChEBI-20 layout (CID<TAB>SMILES<TAB>description).")] = None,
    cids: Annotated[str | None, typer.Option(help="pubchem: CIDs separated by commas or spaces.")] = None,
    cid_file: Annotated[Path | None, typer.Option(help="pubchem: a file with one CID per line.")] = None,
    out: Annotated[Path | None, typer.Option(help="root of raw tables (default: paths.raw_dir).")] = None,
    prefect: Annotated[
        bool,
        typer.Option(help="run as a Prefect flow (shown in the UI of PREFECT_API_URL; a temporary local API otherwise)."),
    ] = False,
    params: ParamsOpt = DEFAULT_PARAMS,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Read a source into a raw-table snapshot: <out>/<source>/<snapshot>/ with Parquet parts,
    rejects.parquet and manifest.json. Every input row is accepted or rejected with a reason."""
    from deepmolm.data.ingest import IngestRequest, cid_tokens, read_cid_file, run_ingest

    with _command(as_json):
        cfg = _params(params, set_)
        out_root = str(out) if out else None
        if source == "chebi20":
            _forbid(source, path=path, cids=cids, cid_file=cid_file)
            request = IngestRequest("chebi20", splits=tuple(split or ()), out_root=out_root)
        elif source == "tsv":
            _forbid(source, cids=cids, cid_file=cid_file)
            if path is None:
                raise _Exit(2, "--source tsv needs --path FILE")
            if split and len(split) > 1:
                raise _Exit(2, "--source tsv takes at most one --split (the label of the file's rows)")
            request = IngestRequest("tsv", splits=tuple(split or ()), path=str(path.resolve()), out_root=out_root)
        elif source == "pubchem":
            _forbid(source, path=path, split=split)
            if (cids is None) == (cid_file is None):
                raise _Exit(2, "--source pubchem needs exactly one of --cids or --cid-file")
            tokens = read_cid_file(cid_file) if cid_file else [(t, None) for t in cid_tokens(cids)]
            if not tokens:
                raise _Exit(2, "no CIDs given")
            request = IngestRequest("pubchem", cid_tokens=tuple(tokens), out_root=out_root)
        else:
            raise _Exit(2, f"unknown source {source!r}: expected chebi20, tsv or pubchem")
        if prefect:
            from flows.ingest import run_request

            summary = run_request(request, params, set_ or [], progress=not quiet)
        else:
            summary = run_ingest(cfg, request, progress=not quiet).as_dict()
    _emit(summary, as_json, _render_counts)


@data_app.command("featurize")
def data_featurize(
    input_: Annotated[
        Path, typer.Option("--input", help="a raw-table snapshot, or a source directory (its current snapshot: LATEST).")
    ],
    out: Annotated[Path | None, typer.Option(help="root of shard versions (default: paths.shards_dir).")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="local Dask worker processes (default: featurize.dask.workers).")] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(help="address of a running Dask scheduler to use instead of a local cluster (or $DEEPMOLM_DASK_SCHEDULER)."),
    ] = None,
    params: ParamsOpt = DEFAULT_PARAMS,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Featurize a raw table into a shard version <out>/<dataset>/<version>/ as a Prefect flow on Dask.

    The version id follows from the input and the params: an interrupted run started again finishes
    the missing parts only, and molecules an earlier version already holds are reused."""
    with _command(as_json):
        _params(params, set_)  # fail on bad params before any cluster starts
        from flows.featurize import run_featurize

        summary = run_featurize(input_, out, params, set_ or [], workers=workers, scheduler=scheduler, progress=not quiet)
    _emit(summary, as_json, _render_counts)


@data_app.command("validate")
def data_validate(
    shards: Annotated[Path, typer.Option(help="a shard version directory, or a dataset directory (its current version: LATEST).")],
    report: Annotated[bool, typer.Option(help="also write the data-quality page <reports_dir>/data/index.html.")] = True,
    prefect: Annotated[bool, typer.Option(help="run as the Prefect flow `validate` (PREFECT_API_URL, or a temporary local API).")] = False,
    params: ParamsOpt = DEFAULT_PARAMS,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,  # noqa: ARG001 - every data command takes it
) -> None:
    """Run the data contracts (Great Expectations suites in data_contracts/) on a shard version.

    Exit 1 when a critical expectation fails, so `dvc repro` stops before training; failed warnings
    are listed and do not change the exit code. Data Docs are updated for every run."""
    from deepmolm.data.contracts.gate import ContractError, validate_shard_version

    with _command(as_json):
        cfg = _params(params, set_)
        try:
            if prefect:
                from flows.validate import run_validate

                summary = run_validate(shards, params, set_ or [], report=report)
            else:
                result = validate_shard_version(shards, cfg)
                summary = result.as_dict()
                if report:
                    from deepmolm.reports.data_quality import write_data_report

                    summary["report"] = str(write_data_report(Path(result.target), cfg, result))
        except ContractError as exc:
            raise _Exit(2, str(exc)) from None
    _emit(summary, as_json, _render_validation)
    if not summary["success"]:
        raise typer.Exit(1)


@data_app.command("instructions")
def data_instructions(
    shards: Annotated[Path, typer.Option(help="a shard version directory, or a dataset directory (its current version: LATEST).")],
    out: Annotated[Path | None, typer.Option(help="root of instruction sets (default: paths.instructions_dir).")] = None,
    prefect: Annotated[bool, typer.Option(help="run as the Prefect flow `instructions` (PREFECT_API_URL, or a temporary local API).")] = False,
    params: ParamsOpt = DEFAULT_PARAMS,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Build captioning and property-question examples from a shard version, then check them
    against the instruction_examples contract (exit 1 when a critical expectation fails)."""
    from deepmolm.data.contracts.gate import ContractError, validate_instructions
    from deepmolm.data.instructions import build_instructions

    with _command(as_json):
        cfg = _params(params, set_)
        try:
            if prefect:
                from flows.instructions import run_instructions

                summary = run_instructions(shards, out, params, set_ or [])
            else:
                summary = build_instructions(shards, out or cfg.paths.instructions_dir, cfg.instructions)
                contract = validate_instructions(Path(summary["out"]), cfg).as_dict()
                summary["contract"] = {k: contract[k] for k in ("success", "evaluated", "failed", "warnings")}
        except ContractError as exc:
            raise _Exit(2, str(exc)) from None
    _emit(summary, as_json, lambda s: stdout.print(s))
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


def _forbid(source: str, **given) -> None:
    extra = [f"--{name.replace('_', '-')}" for name, value in given.items() if value]
    if extra:
        raise _Exit(2, f"--source {source} does not take {', '.join(extra)}")


@data_app.command("refresh")
def data_refresh(
    params: ParamsOpt = DEFAULT_PARAMS,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The scheduled refresh, run now: for each of refresh.sources ingest, featurize, validate (with the
    data-quality page), then `dvc commit` of their stages. A Prefect flow (deployment `refresh-dataset`)."""
    from deepmolm.data.contracts.gate import ContractError
    from flows.refresh import run_refresh
    from flows.validate import ContractFailed

    with _command(as_json):
        _params(params, set_)
        try:
            summary = run_refresh(params.resolve().parent, params.resolve().name, set_ or [])
        except ContractError as exc:
            raise _Exit(2, str(exc)) from None
        except ContractFailed as exc:
            raise _Exit(1, f"the data contract failed ({exc}); the data-quality page shows why") from None
    _emit(summary, as_json, lambda s: stdout.print(s))


@data_app.command("summary")
def data_summary(
    snapshot: Annotated[Path, typer.Argument(help="a raw snapshot or shard version directory, or the directory above it (its current one: LATEST).")],
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Counts and reject reasons of a raw-table snapshot or a shard version, from its manifest."""
    from deepmolm.data.shards import parts as shards
    from deepmolm.data.sources import raw_table

    with _command(as_json):
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
    _emit(summary, as_json, _render_counts)


@eval_app.command("run")
def eval_run(
    model: Annotated[Path | None, typer.Option(help="the trained model (default: <models_dir>/stage2).")] = None,
    instructions: InstructionsOpt = None,
    prefect: Annotated[bool, typer.Option(help="run as the Prefect flow `evaluate` (PREFECT_API_URL, or a temporary local API).")] = False,
    params: ParamsOpt = DEFAULT_PARAMS,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """The evaluate stage: the model answers the held-out examples (eval.splits), the retrieval baseline
    answers the same molecules from train.splits; both are scored. Writes <reports_dir>/eval/."""
    from deepmolm.data.instructions import resolve_instruction_set
    from deepmolm.evaluation.evaluate import evaluate

    with _command(as_json):
        cfg = _params(params, set_)
        model = model or cfg.train.models_dir / "stage2"
        instructions = instructions or cfg.paths.instructions_dir
        try:
            if prefect:
                from flows.evaluate import run_evaluate

                metrics = run_evaluate(model, instructions, params, set_ or [], progress=not quiet)
            else:
                metrics = evaluate(cfg, model, resolve_instruction_set(instructions), progress=not quiet)
        except ValueError as exc:  # nothing held out, nothing to retrieve from
            raise _Exit(1, str(exc)) from None

    _emit(metrics, as_json, _render_metrics)


@eval_app.command("show")
def eval_show(
    metrics: Annotated[Path | None, typer.Option(help="an evaluation's metrics.json (default: <reports_dir>/eval/metrics.json).")] = None,
    params: ParamsOpt = DEFAULT_PARAMS,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The metrics table of an evaluation: the model beside the retrieval and mean baselines."""
    from deepmolm.evaluation.evaluate import METRICS as METRICS_FILE
    from deepmolm.evaluation.evaluate import evaluation_dir

    with _command(as_json):
        path = metrics or evaluation_dir(_params(params, set_)) / METRICS_FILE
        if not Path(path).is_file():
            raise _Exit(1, f"no evaluation at {path}: run `deepmolm eval run` (the evaluate stage) first")
        summary = json.loads(Path(path).read_text())
    _emit(summary, as_json, _render_metrics)


def _render_metrics(m: dict) -> None:
    from deepmolm.evaluation.captions import METRICS

    splits = m["dataset"]["eval_splits"]
    where = splits if isinstance(splits, str) else ", ".join(splits)
    table = Table(title=f"captions of {m['dataset']['eval_molecules']} held-out molecules ({where})")
    table.add_column("")
    for name in (*METRICS, "degenerate"):
        table.add_column(name, justify="right")
    baseline = m["baseline"]
    for label, scores in (("DeepMoLM", m["model"]["captions"]),
                          (f"retrieval baseline (pool {baseline['pool_molecules']})", baseline["captions"])):
        degenerate = (scores or {}).get("degenerate")
        table.add_row(label, *(f"{scores[name]:.3f}" if scores else "-" for name in METRICS),
                      "-" if degenerate is None else f"{degenerate:.1%}")
    stdout.print(table)
    means = m.get("mean_baseline", {}).get("properties", {})
    properties = Table(title="property questions")
    for column in ("property", "n", "answers with a number", "MAE", "mean baseline MAE", "MAE / mean baseline's"):
        properties.add_column(column, justify="right")
    for name, p in m["model"]["properties"].items():
        mean_mae = means.get(name, {}).get("mae")
        ratio = "-" if p["mae"] is None or not mean_mae else f"{p['mae'] / mean_mae:.2f}"
        properties.add_row(name, str(p["n"]), f"{p['valid_ratio']:.1%}", "-" if p["mae"] is None else f"{p['mae']:.4g}",
                           "-" if mean_mae is None else f"{mean_mae:.4g}", ratio)
    stdout.print(properties)


@eval_app.command("captions")
def eval_captions(
    predictions: Annotated[Path, typer.Option(help="prediction file: MolT5's TSV or JSON lines (reference, prediction).")],
    format_: Annotated[str, typer.Option("--format", help="auto (by suffix), molt5 or jsonl.")] = "auto",
    tokenizer: Annotated[Path | None, typer.Option(help="local Hugging Face tokenizer directory (default: eval.tokenizer).")] = None,
    out: Annotated[Path | None, typer.Option(help="also write the scores as JSON to this file.")] = None,
    params: ParamsOpt = DEFAULT_PARAMS,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """BLEU-2/4, ROUGE-1/2/L and METEOR of generated captions, as ChEBI-20 papers report them (0-1 scale)."""
    from deepmolm.evaluation.captions import METRICS, load_metric_tokenizer, score_captions
    from deepmolm.evaluation.predictions import PredictionFileError, read_predictions
    from deepmolm.evaluation.wordnet import WordNetMissing

    with _command(as_json):
        cfg = _params(params, set_)
        try:
            pairs = read_predictions(predictions, format_)
            scores = score_captions(pairs, load_metric_tokenizer(tokenizer or cfg.eval.tokenizer),
                                    max_tokens=cfg.eval.max_tokens, nltk_data=cfg.eval.nltk_data).as_dict()
        except (PredictionFileError, WordNetMissing, ValueError) as exc:
            raise _Exit(1, str(exc)) from None
        if out:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(scores, indent=2) + "\n")

    def render(summary: dict) -> None:
        table = Table(title=f"caption metrics: {predictions} ({summary['n']} captions)")
        for name in METRICS:
            table.add_column(name, justify="right")
        table.add_row(*(f"{summary[name]:.3f}" for name in METRICS))
        stdout.print(table)

    _emit(scores, as_json, render)


@eval_app.command("properties")
def eval_properties(
    predictions: Annotated[Path, typer.Option(help="JSON lines with reference, prediction and property.")],
    params: ParamsOpt = DEFAULT_PARAMS,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Valid-answer ratio and MAE over valid answers, per property (ranges: eval.property_ranges)."""
    from deepmolm.evaluation.predictions import PredictionFileError, read_predictions
    from deepmolm.evaluation.properties import score_properties

    with _command(as_json):
        cfg = _params(params, set_)
        try:
            scores = score_properties(read_predictions(predictions, "jsonl"), cfg.eval.property_ranges)
        except (PredictionFileError, ValueError) as exc:
            raise _Exit(1, str(exc)) from None
    summary = {name: score.as_dict() for name, score in scores.items()}

    def render(summary: dict) -> None:
        table = Table(title=f"property QA: {predictions}")
        for column in ("property", "n", "valid ratio", "MAE", "unparseable", "out of range"):
            table.add_column(column, justify="right")
        for name, s in summary.items():
            mae = "-" if s["mae"] is None else f"{s['mae']:.4g}"
            table.add_row(name, str(s["n"]), f"{s['valid_ratio']:.3f}", mae, str(s["unparseable"]), str(s["out_of_range"]))
        stdout.print(table)

    _emit(summary, as_json, render)


@eval_app.command("baseline")
def eval_baseline(
    train: Annotated[Path, typer.Option(help="shard version (or dataset directory) holding the retrieval pool.")],
    test: Annotated[Path, typer.Option(help="shard version (or dataset directory) holding the queries.")],
    out: Annotated[Path, typer.Option(help="prediction file to write (JSON lines).")],
    train_split: Annotated[str | None, typer.Option(help="only pool rows of this split (e.g. validation).")] = None,
    test_split: Annotated[str | None, typer.Option(help="only query rows of this split (e.g. test).")] = None,
    params: ParamsOpt = DEFAULT_PARAMS,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The retrieval baseline: each query gets the description of its most similar pool molecule."""
    from deepmolm.evaluation.baseline import retrieve
    from deepmolm.evaluation.predictions import write_jsonl
    from deepmolm.evaluation.shard_molecules import read_molecules

    with _command(as_json):
        cfg = _params(params, set_).eval.baseline
        queries = read_molecules(test, test_split)
        pool = read_molecules(train, train_split)
        if not queries or not pool:
            raise _Exit(1, f"no molecules with a description to {'query' if not queries else 'retrieve from'}")
        results = retrieve(queries, pool, kind=cfg.fingerprint, radius=cfg.morgan_radius, bits=cfg.morgan_bits)
        write_jsonl([p for p, _ in results], out)
    similarities = [s for _, s in results]
    summary = {"out": str(out), "queries": len(queries), "pool": len(pool), "fingerprint": cfg.fingerprint,
               "mean_similarity": round(sum(similarities) / len(similarities), 4)}
    _emit(summary, as_json, lambda s: stdout.print(s))


@model_app.command("summary")
def model_summary_command(
    preset: Annotated[str | None, typer.Option(help="tiny, small, paper, ... (default: model.preset or mumo.preset).")] = None,
    family: Annotated[str, typer.Option(help="deepmolm or mumo.")] = "deepmolm",
    params: ParamsOpt = DEFAULT_PARAMS,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Parameter counts per block of a preset, computed on the meta device (no weights allocated)."""
    from deepmolm.models.deepmolm.presets import model_config, model_summary
    from deepmolm.models.mumo.presets import mumo_config, mumo_summary

    with _command(as_json):
        loaded = _params(params, set_)
        if family == "mumo":
            summary = {"preset": preset or loaded.mumo.preset, **mumo_summary(mumo_config(loaded, preset))}
        elif family == "deepmolm":
            summary = {"preset": preset or loaded.model.preset, **model_summary(model_config(loaded, preset))}
        else:
            raise ConfigError(f"--family {family!r}: deepmolm or mumo")

    def render_mumo(s: dict) -> None:
        table = Table(title=f"MuMo preset {s['preset']}: {s['total'] / 1e6:,.1f}M parameters")
        table.add_column("block")
        table.add_column("parameters", justify="right")
        for name, count in s["blocks"].items():
            table.add_row(name, f"{count:,}")
        stdout.print(table)
        stdout.print(f"{len(s['layers'])} layers ({s['layers'].count('attention')} attention), hidden size "
                     f"{s['hidden_size']}; the prior is injected at layers {s['injected_layers'][0]}..{s['injected_layers'][-1]}")

    def render(s: dict) -> None:
        if s.get("family") == "mumo":
            return render_mumo(s)
        table = Table(title=f"DeepMoLM preset {s['preset']}: {s['total'] / 1e6:,.1f}M parameters")
        table.add_column("block")
        table.add_column("parameters", justify="right")
        for name, count in s["blocks"].items():
            table.add_row(name, f"{count:,}")
        table.add_row("DeepEncoder", f"{s['encoder']:,}")
        stdout.print(table)
        stdout.print(f"{s['visual_tokens']} visual tokens of {s['visual_dim']} dims from {s['image_size']} px -> "
                     f"LM hidden size {s['hidden_size']} ({s['fusion_variant']})")

    _emit(summary, as_json, render)


@mumo_app.command("pretrain")
def mumo_pretrain_command(
    shards: Annotated[Path | None, typer.Option(help="a chebi20 shard version with its SFP table, or their directory (default: <shards_dir>/chebi20).")] = None,
    prefect: Annotated[bool, typer.Option(help="run as the Prefect flow `mumo-pretrain`.")] = False,
    params: ParamsOpt = DEFAULT_PARAMS,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Masked-language-model pretraining of MuMo (Ray Train); exports <mumo.models_dir>/pretrained."""
    from deepmolm.evaluation.mumo.benchmark import pretrain

    with _command(as_json):
        if prefect:
            from flows.mumo import run_mumo

            summary = run_mumo("pretrain", shards, params, set_ or [], progress=not quiet)
        else:
            summary = pretrain(_params(params, set_), shards=shards, progress=not quiet)

    def render(s: dict) -> None:
        stdout.print(f"MuMo pretrained on {s['molecules']} molecules ({s['steps']} steps): MLM loss "
                     f"{s['first_loss']:.3f} -> {s['last_loss']:.3f}; model in {s['model']}")

    _emit(summary, as_json, render)


@mumo_app.command("benchmark")
def mumo_benchmark_command(
    pretrained: Annotated[Path | None, typer.Option(help="the pretrained MuMo (default: <mumo.models_dir>/pretrained).")] = None,
    prefect: Annotated[bool, typer.Option(help="run as the Prefect flow `mumo-benchmark`.")] = False,
    params: ParamsOpt = DEFAULT_PARAMS,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Fine-tune on ESOL / FreeSolv (every split and seed of mumo.finetune, and the ablation), beside a
    random forest on the same splits; writes <mumo.reports_dir>/results.json and results.md."""
    from deepmolm.evaluation.mumo.benchmark import benchmark

    with _command(as_json):
        if prefect:
            from flows.mumo import run_mumo

            summary = run_mumo("benchmark", pretrained, params, set_ or [], progress=not quiet)
        else:
            summary = benchmark(_params(params, set_), pretrained=pretrained, progress=not quiet)

    def render(s: dict) -> None:
        print((Path(s["out"]) / "results.md").read_text())

    _emit(summary, as_json, render)


@model_app.command("tokenizer")
def model_tokenizer(
    out: Annotated[Path, typer.Option(help="where to save the tokenizer (save_pretrained).")],
    instructions: InstructionsOpt = None,
    prefect: Annotated[bool, typer.Option(help="run as the Prefect flow `tokenizer` (PREFECT_API_URL, or a temporary local API).")] = False,
    params: ParamsOpt = DEFAULT_PARAMS,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The tokenizer artifact: model.tokenizer_dir as is, or a byte-level BPE trained on the
    instruction examples of train.splits."""
    from deepmolm.data.instructions import resolve_instruction_set
    from deepmolm.models.deepmolm.tokenizer import build_tokenizer

    with _command(as_json):
        cfg = _params(params, set_)
        instructions = instructions or cfg.paths.instructions_dir
        try:
            if prefect:
                from flows.tokenizer import run_tokenizer

                summary = run_tokenizer(instructions, out, params, set_ or [])
            else:
                summary = build_tokenizer(resolve_instruction_set(instructions), out, cfg)
        except ValueError as exc:  # no examples of train.splits
            raise _Exit(1, str(exc)) from None
    _emit(summary, as_json, lambda s: stdout.print(s))


@app.command("predict")
def predict(
    checkpoint: Annotated[Path, typer.Option(help="a DeepMoLM checkpoint directory (model and tokenizer).")],
    smiles: Annotated[str | None, typer.Option(help="the molecule; drawn and given a conformer as the shards are.")] = None,
    image: Annotated[Path | None, typer.Option(help="the molecule's drawing (PNG); needs --sdf.")] = None,
    sdf: Annotated[Path | None, typer.Option(help="a 3D structure (SDF) of the same molecule; needs --image.")] = None,
    prompt: Annotated[str, typer.Option(help="the instruction.")] = "Describe the input molecule.",
    task: Annotated[str, typer.Option(help="what the prompt asks: caption (a paragraph) | property_qa (a sentence).")] = "caption",
    params: ParamsOpt = DEFAULT_PARAMS,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Ask a trained DeepMoLM about one molecule: --smiles SMILES, or --image PNG --sdf SDF."""
    from deepmolm.config import TASKS
    from deepmolm.data.featurize.outcome import FeaturizeError
    from deepmolm.inference import Predictor, molecule_from_files, molecule_from_smiles

    with _command(as_json):
        cfg = _params(params, set_)
        if (smiles is None) == (image is None and sdf is None):
            raise _Exit(2, "give either --smiles or both --image and --sdf")
        if smiles is None and (image is None or sdf is None):
            raise _Exit(2, "--image and --sdf go together")
        if task not in TASKS:
            raise _Exit(2, f"--task {task!r}: one of {', '.join(TASKS)}")
        try:
            molecule = molecule_from_smiles(smiles, cfg) if smiles else molecule_from_files(image, sdf, cfg)
        except FeaturizeError as exc:
            raise _Exit(1, f"cannot read the molecule: {exc}") from None
        text = Predictor(checkpoint).answer(molecule, prompt, cfg, task)
    _emit({"prompt": prompt, "answer": text, "geometry": molecule.e3fp is not None,
           "conformer_source": molecule.conformer_source}, as_json,
          lambda s: stdout.print(s["answer"], highlight=False, markup=False))


@app.command("serve")
def serve(
    checkpoint: Annotated[Path, typer.Option(help="a DeepMoLM checkpoint directory (model and tokenizer), e.g. models/stage2.")],
    shards: Annotated[Path | None, typer.Option(help="a shard version (or dataset directory: its LATEST) to browse.")] = None,
    instructions: Annotated[Path | None, typer.Option(help="the retrieval baseline's pool: this instruction set's training molecules (default: the checkpoint's, from its provenance).")] = None,
    host: Annotated[str | None, typer.Option(help="interface to listen on (default: serve.host, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="port (default: serve.port, 7860); 0: any free one.")] = None,
    public: Annotated[bool, typer.Option(help="allow a --host other than loopback: anyone who reaches it can run the model and read the shards.")] = False,
    params: ParamsOpt = DEFAULT_PARAMS,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A web page to ask a trained DeepMoLM about a molecule and to browse a shard version, with a
    JSON API beside it (POST /api/predict, GET /api/health, /api/molecules). Runs until interrupted."""
    from deepmolm.serve.server import bind, is_loopback
    from deepmolm.serve.server import serve as run_server

    with _command(as_json):
        cfg = _params(params, set_)
        host = host or cfg.serve.host
        if not is_loopback(host) and not public:
            raise _Exit(2, f"--host {host} is not a loopback address: anyone who can reach it could use the model "
                           f"and read the shards; add --public to serve it anyway")
        if not (Path(checkpoint) / "config.json").is_file():
            raise _Exit(1, f"{checkpoint} is not a DeepMoLM checkpoint (no config.json)")
        try:
            sock = bind(host, cfg.serve.port if port is None else port)
        except OSError as exc:
            raise _Exit(1, str(exc)) from None

        def announce(summary: dict) -> None:
            _emit(summary, as_json, lambda s: stdout.print(
                f"serving {s['url']} (page; API: {s['url']}api/predict, {s['url']}api/health); Ctrl-C stops",
                highlight=False))
            sys.stdout.flush()

        run_server(cfg, sock, checkpoint, shards, instructions, announce)


@report_app.command("pipeline")
def report_pipeline(
    instructions: InstructionsOpt = None,
    prefect: Annotated[bool, typer.Option(help="run as the Prefect flow `report` (PREFECT_API_URL, or a temporary local API).")] = False,
    params: ParamsOpt = DEFAULT_PARAMS,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The pipeline's front page <reports_dir>/index.html: data-quality link, training curves, the
    model beside the retrieval baseline, and held-out molecules with their captions."""
    from deepmolm.data.instructions import resolve_instruction_set
    from deepmolm.reports.pipeline import write_pipeline_report

    with _command(as_json):
        cfg = _params(params, set_)
        instructions = instructions or cfg.paths.instructions_dir
        if prefect:
            from flows.report import run_report

            page = run_report(instructions, params, set_ or [])
        else:
            page = str(write_pipeline_report(cfg, resolve_instruction_set(instructions)))
    _emit({"report": page}, as_json, lambda s: stdout.print(f"report: {s['report']}"))


StageOpt = Annotated[int, typer.Option("--stage", min=1, max=2, help="1: align the projector; 2: instruction tuning.")]


@train_app.command("run")
def train_run(
    stage: StageOpt,
    instructions: InstructionsOpt = None,
    tokenizer: Annotated[Path | None, typer.Option(help="tokenizer directory (default: <models_dir>/tokenizer; stage 2: the stage 1 model's).")] = None,
    init: Annotated[Path | None, typer.Option(help="stage 2 only: the model to start from (default: <models_dir>/stage1).")] = None,
    out: Annotated[Path | None, typer.Option(help="where the exported model goes (default: <models_dir>/stage<N>).")] = None,
    prefect: Annotated[bool, typer.Option(help="run as the Prefect flow `train` (PREFECT_API_URL, or a temporary local API).")] = False,
    params: ParamsOpt = DEFAULT_PARAMS,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train one stage on Ray Train (train.ray_address, or a local Ray). Re-running the same command
    resumes from the run's last checkpoint; a finished run is not trained again."""
    from deepmolm.training.deepmolm.launch import run_stage

    with _command(as_json):
        cfg = _params(params, set_)
        paths = {"instructions": instructions, "tokenizer": tokenizer, "init": init, "out": out}
        from ray.train import TrainingFailedError

        try:
            if prefect:
                from flows.train import run_train

                summary = run_train([stage], params, set_ or [], paths)[0]
            else:
                summary = run_stage(cfg, stage, **paths)
        except TrainingFailedError as exc:  # the workers failed more than train.max_failures times
            raise _Exit(1, f"{str(exc).strip().splitlines()[0].rstrip(':')} (the workers' tracebacks are above)") from None

    def render(s: dict) -> None:
        state = "up to date" if s["up_to_date"] else f"trained in {s['seconds']} s"
        stdout.print(f"stage {s['stage']} ({s['run']}): {s['steps']} steps, loss {s['first_loss']:.4f} -> "
                     f"{s['last_loss']:.4f}, {state}; model in {s['model']}")

    _emit(summary, as_json, render)


@train_app.command("submit")
def train_submit(
    address: Annotated[str, typer.Option(help="the Ray cluster's dashboard (Jobs API), e.g. http://HEAD:8265.")],
    stage: StageOpt,
    wait: Annotated[bool, typer.Option(help="stream the job's logs until it ends; exit 1 unless it succeeded.")] = True,
    params: ParamsOpt = DEFAULT_PARAMS,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Submit `deepmolm train run --stage N` to a Ray cluster through the Jobs API, with this project
    as the job's working_dir. Paths in params are the cluster's (shared storage)."""
    from deepmolm.training.submit import submit_training

    with _command(as_json):
        cfg = _params(params, set_)
        project = params.resolve().parent
        log = (lambda line: stderr.print(line, highlight=False, markup=False)) if as_json else \
            (lambda line: stdout.print(line, highlight=False, markup=False))
        summary = submit_training(address, stage, project, params.name, list(set_ or []), cfg.train.cluster,
                                  wait=wait, log=log)
    _emit(summary, as_json, lambda s: stdout.print(f"job {s['job_id']}: {s['status']}"))
    if wait and not summary["succeeded"]:
        raise typer.Exit(1)


@config_app.command("show")
def config_show(params: ParamsOpt = DEFAULT_PARAMS, set_: SetOpt = None, as_json: JsonOpt = False) -> None:
    """Print the resolved params (file plus overrides, paths made absolute), or the error that stops them."""
    with _command(as_json):
        cfg = _params(params, set_)
    # absolute paths, as the program uses them (a JSON dump writes them relative to the project root)
    dumped = json.loads(json.dumps(cfg.model_dump(), default=str))
    if as_json:
        print(json.dumps(dumped))
    else:
        sys.stdout.write(yaml.safe_dump(dumped, sort_keys=False))


if __name__ == "__main__":  # pragma: no cover
    app()
