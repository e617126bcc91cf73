"""`deepmolm mumo`: pretraining and the property benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from deepmolm.cli.common import Common, PrefectOpt, command, stdout

mumo_app = typer.Typer(help="MuMo: structural fusion and late injection, for property prediction.", no_args_is_help=True)


@command(mumo_app, "pretrain")
def mumo_pretrain_command(
    common: Common,
    shards: Annotated[Path | None, typer.Option(help="a shard version with its SFP table, or their directory (default: <shards_dir>/moses, MOSES's corpus).")] = None,
    prefect: PrefectOpt = False,
) -> None:
    """Masked-language-model pretraining of MuMo (Ray Train); exports <mumo.models_dir>/pretrained."""
    from deepmolm.evaluation.mumo.benchmark import pretrain

    with common.errors():
        summary = common.run(prefect, "flows.mumo:run_mumo", "pretrain", shards, progress=common.progress,
                             inline=lambda: pretrain(common.params, shards=shards, progress=common.progress))

    def render(s: dict) -> None:
        stdout.print(f"MuMo pretrained on {s['molecules']} molecules ({s['steps']} steps): MLM loss "
                     f"{s['first_loss']:.3f} -> {s['last_loss']:.3f}; model in {s['model']}")

    common.emit(summary, render)


@command(mumo_app, "benchmark")
def mumo_benchmark_command(
    common: Common,
    pretrained: Annotated[Path | None, typer.Option(help="the pretrained MuMo (default: <mumo.models_dir>/pretrained).")] = None,
    prefect: PrefectOpt = False,
) -> None:
    """Fine-tune on ESOL / FreeSolv (every split and seed of mumo.finetune, and the ablation), beside a
    random forest on the same splits; writes <mumo.reports_dir>/results.json and results.md."""
    from deepmolm.evaluation.mumo.benchmark import benchmark

    with common.errors():
        summary = common.run(prefect, "flows.mumo:run_mumo", "benchmark", pretrained, progress=common.progress,
                             inline=lambda: benchmark(common.params, pretrained=pretrained, progress=common.progress))

    def render(s: dict) -> None:
        print((Path(s["out"]) / "results.md").read_text())

    common.emit(summary, render)
