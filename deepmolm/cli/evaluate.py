"""`deepmolm eval`: the evaluate stage, its metrics table, robustness to worse inputs, and scoring of prediction files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from deepmolm.cli.common import Common, Exit, InstructionsOpt, PrefectOpt, command, stderr, stdout

eval_app = typer.Typer(help="Caption metrics (MolT5 protocol), property QA and the retrieval baseline.", no_args_is_help=True)


@command(eval_app, "run")
def eval_run(
    common: Common,
    model: Annotated[Path | None, typer.Option(help="the trained model (default: <models_dir>/stage2).")] = None,
    instructions: InstructionsOpt = None,
    prefect: PrefectOpt = False,
) -> None:
    """The evaluate stage: the model answers the held-out examples (eval.splits), the retrieval baseline
    answers the same molecules from train.splits; both are scored. Writes <reports_dir>/eval/."""
    from deepmolm.models.deepmolm.checkpoint import checked_checkpoint
    from deepmolm.runtime import numerics

    with common.errors():
        cfg = common.params
        model = checked_checkpoint(model or cfg.train.models_dir / "stage2")
        numerics.pin(cfg.numerics, cfg.numerics.evaluation_threads)  # before this process computes anything
        instructions = instructions or cfg.paths.instructions_dir
        from deepmolm.data.instructions import resolve_instruction_set  # (after the checks: they answer at once)
        from deepmolm.evaluation.evaluate import evaluate

        try:
            metrics = common.run(prefect, "flows.evaluate:run_evaluate", model, instructions, progress=common.progress,
                                 inline=lambda: evaluate(cfg, model, resolve_instruction_set(instructions),
                                                         progress=common.progress))
        except ValueError as exc:  # nothing held out, nothing to retrieve from
            raise Exit(1, str(exc)) from None

    common.emit(metrics, _render_metrics)


@command(eval_app, "robustness")
def eval_robustness(
    common: Common,
    model: Annotated[Path | None, typer.Option(help="the trained model (default: <models_dir>/stage2).")] = None,
    instructions: InstructionsOpt = None,
    out: Annotated[Path | None, typer.Option(help="where robustness.json and .md go (default: <reports_dir>/eval/robustness).")] = None,
) -> None:
    """The evaluate stage's held-out examples answered from perturbed inputs (eval.robustness): E3FP
    from noisy and unoptimised conformers, JPEG-compressed, blurred and restyled drawings; the same
    metrics per perturbation. `deepmolm report pipeline --robustness <out>/robustness.json` shows them."""
    from deepmolm.models.deepmolm.checkpoint import checked_checkpoint

    with common.errors():
        cfg = common.params
        model = checked_checkpoint(model or cfg.train.models_dir / "stage2")
        from deepmolm.data.instructions import resolve_instruction_set  # (after the checks: they answer at once)
        from deepmolm.evaluation.robustness import robustness

        try:
            report = robustness(cfg, model, resolve_instruction_set(instructions or cfg.paths.instructions_dir), out=out,
                                progress=common.progress)
        except ValueError as exc:
            raise Exit(1, str(exc)) from None
    common.emit(report, _render_robustness)


def _render_robustness(report: dict) -> None:
    from deepmolm.evaluation.robustness import ROBUSTNESS_COLUMNS, robustness_rows

    table = Table(title=f"robustness: {report['molecules']} molecules, {report['examples']} examples ({report['out']})")
    for column in ("perturbation", *ROBUSTNESS_COLUMNS, "valid answers", "property MAE", "E3FP changed"):
        table.add_column(column, justify="left" if column in ("perturbation", "property MAE") else "right")
    for row in robustness_rows(report):
        table.add_row(*row)
    stdout.print(table)


@command(eval_app, "ablation")
def eval_ablation(
    common: Common,
    force: Annotated[bool, typer.Option(help="run every cell again, finished ones too.")] = False,
) -> None:
    """The paper's ablations (eval.ablation): one queued DVC experiment per projector variant and
    seed, and the fusion model without stage 1; runs the cells not finished yet, one at a time, then
    writes the table of mean and spread over seeds beside the paper's directions (<out>/ablation.md).
    `./dev ablation` runs it with a local Prefect server; `dvc exp show` lists the experiments."""
    from deepmolm.evaluation.ablation import cells, run_grid, summarize, write_summary

    with common.errors():
        cfg = common.params
        grid = cells(cfg.eval.ablation)
        try:
            metrics = run_grid(Path.cwd(), grid, force=force, echo=lambda line: stderr.print(line, highlight=False))
        except RuntimeError as exc:
            raise Exit(1, str(exc)) from None
        summary = summarize(grid, metrics)
        path = write_summary(summary, cfg.eval.ablation.out)
    common.emit({**summary, "out": str(path)}, _render_ablation)


def _render_ablation(summary: dict) -> None:
    from deepmolm.evaluation.ablation import COLUMNS, direction_rows, table_rows

    table = Table(title=f"ablation grid: mean (min-max over seeds) on the held-out molecules ({summary['out']})")
    for column in ("row", "seeds", *COLUMNS):
        table.add_column(column, justify="left" if column == "row" else "right")
    for row in table_rows(summary):
        table.add_row(*row)
    stdout.print(table)
    paper = Table(title="the paper's directions")
    for column in ("the paper", "ours (closest case)", "verdict"):
        paper.add_column(column)
    for row in direction_rows(summary):
        paper.add_row(*row)
    stdout.print(paper)


@command(eval_app, "show")
def eval_show(
    common: Common,
    metrics: Annotated[Path | None, typer.Option(help="an evaluation's metrics.json (default: <reports_dir>/eval/metrics.json).")] = None,
) -> None:
    """The metrics table of an evaluation: the model beside the retrieval and mean baselines."""
    from deepmolm.evaluation.outputs import METRICS as METRICS_FILE
    from deepmolm.evaluation.outputs import evaluation_dir

    with common.errors():
        path = metrics or evaluation_dir(common.params) / METRICS_FILE
        if not Path(path).is_file():
            raise Exit(1, f"no evaluation at {path}: run `deepmolm eval run` (the evaluate stage) first")
        summary = json.loads(Path(path).read_text())
    common.emit(summary, _render_metrics)


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


@command(eval_app, "captions")
def eval_captions(
    common: Common,
    predictions: Annotated[Path, typer.Option(help="prediction file: MolT5's TSV or JSON lines (reference, prediction).")],
    format_: Annotated[str, typer.Option("--format", help="auto (by suffix), molt5 or jsonl.")] = "auto",
    tokenizer: Annotated[Path | None, typer.Option(help="local Hugging Face tokenizer directory (default: eval.tokenizer).")] = None,
    out: Annotated[Path | None, typer.Option(help="also write the scores as JSON to this file.")] = None,
) -> None:
    """BLEU-2/4, ROUGE-1/2/L and METEOR of generated captions, as ChEBI-20 papers report them (0-1 scale)."""
    from deepmolm.evaluation.captions import METRICS, load_metric_tokenizer, score_captions
    from deepmolm.evaluation.predictions import PredictionFileError, read_predictions
    from deepmolm.evaluation.wordnet import WordNetMissing

    with common.errors():
        cfg = common.params
        try:
            pairs = read_predictions(predictions, format_)
            scores = score_captions(pairs, load_metric_tokenizer(tokenizer or cfg.eval.tokenizer),
                                    max_tokens=cfg.eval.max_tokens, nltk_data=cfg.eval.nltk_data).as_dict()
        except (PredictionFileError, WordNetMissing, ValueError) as exc:
            raise Exit(1, str(exc)) from None
        if out:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(scores, indent=2) + "\n")

    def render(summary: dict) -> None:
        table = Table(title=f"caption metrics: {predictions} ({summary['n']} captions)")
        for name in METRICS:
            table.add_column(name, justify="right")
        table.add_row(*(f"{summary[name]:.3f}" for name in METRICS))
        stdout.print(table)

    common.emit(scores, render)


@command(eval_app, "properties")
def eval_properties(
    common: Common,
    predictions: Annotated[Path, typer.Option(help="JSON lines with reference, prediction and property.")],
) -> None:
    """Valid-answer ratio and MAE over valid answers, per property (ranges: eval.property_ranges)."""
    from deepmolm.evaluation.predictions import PredictionFileError, read_predictions
    from deepmolm.evaluation.properties import score_properties

    with common.errors():
        cfg = common.params
        try:
            scores = score_properties(read_predictions(predictions, "jsonl"), cfg.eval.property_ranges)
        except (PredictionFileError, ValueError) as exc:
            raise Exit(1, str(exc)) from None
    summary = {name: score.as_dict() for name, score in scores.items()}

    def render(summary: dict) -> None:
        table = Table(title=f"property QA: {predictions}")
        for column in ("property", "n", "valid ratio", "MAE", "unparseable", "out of range"):
            table.add_column(column, justify="right")
        for name, s in summary.items():
            mae = "-" if s["mae"] is None else f"{s['mae']:.4g}"
            table.add_row(name, str(s["n"]), f"{s['valid_ratio']:.3f}", mae, str(s["unparseable"]), str(s["out_of_range"]))
        stdout.print(table)

    common.emit(summary, render)


@command(eval_app, "baseline")
def eval_baseline(
    common: Common,
    train: Annotated[Path, typer.Option(help="shard version (or dataset directory) holding the retrieval pool.")],
    test: Annotated[Path, typer.Option(help="shard version (or dataset directory) holding the queries.")],
    out: Annotated[Path, typer.Option(help="prediction file to write (JSON lines).")],
    train_split: Annotated[str | None, typer.Option(help="only pool rows of this split (e.g. validation).")] = None,
    test_split: Annotated[str | None, typer.Option(help="only query rows of this split (e.g. test).")] = None,
    max_queries: Annotated[int | None, typer.Option(min=1, help="only the first N queries by CID (each query is compared with the whole pool).")] = None,
) -> None:
    """The retrieval baseline: each query gets the description of its most similar pool molecule."""
    from deepmolm.evaluation.baseline import retrieve
    from deepmolm.evaluation.predictions import write_jsonl
    from deepmolm.evaluation.shard_molecules import read_molecule_parts, read_molecules

    with common.errors():
        cfg = common.params.eval.baseline
        e3fp = cfg.fingerprint == "e3fp"
        queries = sorted(read_molecules(test, test_split, e3fp=e3fp), key=lambda m: m.cid)[:max_queries]
        if not queries:
            raise Exit(1, "no molecules with a description to query")
        try:
            results, pool = retrieve(queries, read_molecule_parts(train, train_split, e3fp=e3fp), kind=cfg.fingerprint,
                                     radius=cfg.morgan_radius, bits=cfg.morgan_bits)
        except ValueError as exc:
            raise Exit(1, f"no molecules with a description to retrieve from ({exc})") from exc
        write_jsonl([p for p, _ in results], out)
    similarities = [s for _, s in results]
    summary = {"out": str(out), "queries": len(queries), "pool": pool, "fingerprint": cfg.fingerprint,
               "mean_similarity": round(sum(similarities) / len(similarities), 4)}
    common.emit(summary, lambda s: stdout.print(s))
