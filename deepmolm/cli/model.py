"""`deepmolm model`: preset sizes and the tokenizer artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from deepmolm.cli.common import Common, Exit, InstructionsOpt, PrefectOpt, command, stdout
from deepmolm.config import ConfigError

model_app = typer.Typer(help="The DeepMoLM model: sizes of the presets.", no_args_is_help=True)


@command(model_app, "summary")
def model_summary_command(
    common: Common,
    preset: Annotated[str | None, typer.Option(help="tiny, small, paper, ... (default: model.preset or mumo.preset).")] = None,
    family: Annotated[str, typer.Option(help="deepmolm or mumo.")] = "deepmolm",
) -> None:
    """Parameter counts per block of a preset, computed on the meta device (no weights allocated)."""
    from deepmolm.models.deepmolm.presets import model_config, model_summary
    from deepmolm.models.mumo.presets import mumo_config, mumo_summary

    with common.errors():
        loaded = common.params
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

    common.emit(summary, render)


@command(model_app, "check-weights")
def model_check_weights(
    common: Common,
    tokenizer: Annotated[Path | None, typer.Option(help="tokenizer directory (default: model.tokenizer_dir, else <models_dir>/tokenizer).")] = None,
) -> None:
    """Check the recipe's pretrained weights (train.init) before training: per part what maps, what
    is skipped, missing or misshapen, and the tokenizer against the embeddings; from the files'
    headers and a model on the meta device, in seconds. Exit 1 on a problem."""
    from deepmolm.models.deepmolm.tokenizer import load_tokenizer
    from deepmolm.training.deepmolm.stages import check_weights

    with common.errors():
        cfg = common.params
        directory = tokenizer or cfg.model.tokenizer_dir or cfg.train.models_dir / "tokenizer"
        if not Path(directory).is_dir():
            raise Exit(1, f"no tokenizer at {directory} (make one with `deepmolm model tokenizer`, or give --tokenizer)")
        report = check_weights(cfg, load_tokenizer(Path(directory)))

    def render(r: dict) -> None:
        if not r["parts"]:
            stdout.print(f"recipe {r['recipe']}: no pretrained weights configured (train.init): every part starts random")
        for part, p in r["parts"].items():
            if "error" in p:
                stdout.print(f"[bold]{part}[/] {p['path']}: {p['error']}", highlight=False, soft_wrap=True)
                continue
            stdout.print(f"[bold]{part}[/] {p['path']}: {p['mapped']} tensors map, {p['skipped']} skipped "
                         f"(e.g. {', '.join(p['skipped_examples']) or 'none'}), {len(p['missing'])} missing, "
                         f"{len(p['unknown'])} unknown, {len(p['mismatched'])} misshapen", highlight=False, soft_wrap=True)
        stdout.print(f"tokenizer: {r['tokenizer_tokens']} tokens, embeddings: {r['embedding_rows']} rows")
        for problem in r["problems"]:
            stdout.print(f"[bold red]problem:[/] {problem}", highlight=False, soft_wrap=True)

    common.emit(report, render)
    if report["problems"]:
        raise typer.Exit(1)


@command(model_app, "tokenizer")
def model_tokenizer(
    common: Common,
    out: Annotated[Path, typer.Option(help="where to save the tokenizer (save_pretrained).")],
    instructions: InstructionsOpt = None,
    prefect: PrefectOpt = False,
) -> None:
    """The tokenizer artifact: model.tokenizer_dir as is, or a byte-level BPE trained on the
    instruction examples of train.splits."""
    from deepmolm.data.instructions import resolve_instruction_set
    from deepmolm.models.deepmolm.tokenizer import build_tokenizer

    with common.errors():
        cfg = common.params
        instructions = instructions or cfg.paths.instructions_dir
        try:
            summary = common.run(prefect, "flows.tokenizer:run_tokenizer", instructions, out,
                                 inline=lambda: build_tokenizer(resolve_instruction_set(instructions), out, cfg))
        except ValueError as exc:  # no examples of train.splits
            raise Exit(1, str(exc)) from None
    common.emit(summary, lambda s: stdout.print(s))
