"""`deepmolm report`: the pipeline's front page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from deepmolm.cli.common import Common, InstructionsOpt, PrefectOpt, command, stdout

report_app = typer.Typer(
    help="The pipeline's report page (the data-quality page comes with `data validate`).",
    no_args_is_help=True,
)


@command(report_app, "pipeline")
def report_pipeline(
    common: Common,
    instructions: InstructionsOpt = None,
    robustness: Annotated[Path | None, typer.Option(help="a `deepmolm eval robustness` result (robustness.json) to show too.")] = None,
    ablation: Annotated[Path | None, typer.Option(help="a `deepmolm eval ablation` table (ablation.json) to show too.")] = None,
    prefect: PrefectOpt = False,
) -> None:
    """The pipeline's front page <reports_dir>/index.html: data-quality link, training curves, the
    model beside the retrieval baseline, and held-out molecules with their captions."""
    from deepmolm.data.instructions import resolve_instruction_set
    from deepmolm.reports.pipeline import write_pipeline_report

    with common.errors():
        cfg = common.params
        instructions = instructions or cfg.paths.instructions_dir
        page = common.run(prefect, "flows.report:run_report", instructions, robustness=robustness, ablation=ablation,
                          inline=lambda: str(write_pipeline_report(cfg, resolve_instruction_set(instructions),
                                                                   robustness=robustness, ablation=ablation)))
    common.emit({"report": page}, lambda s: stdout.print(f"report: {s['report']}"))
