"""The pipeline's front page (reports/index.html) as a Prefect flow."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from deepmolm.config import load_params
from flows.api import prefect_api


@task(name="write-pipeline-report")
def report_task(instructions: str, params_file: str, overrides: list[str], robustness: str | None = None,
                ablation: str | None = None) -> str:
    from deepmolm.data.instructions import resolve_instruction_set
    from deepmolm.reports.pipeline import write_pipeline_report

    params = load_params(Path(params_file), overrides)
    return str(write_pipeline_report(params, resolve_instruction_set(Path(instructions)),
                                     robustness=Path(robustness) if robustness else None,
                                     ablation=Path(ablation) if ablation else None))


@flow(name="report", log_prints=True)
def report_flow(instructions: str, params_file: str = "params.yaml", overrides: list[str] | None = None,
                robustness: str | None = None, ablation: str | None = None) -> str:
    page = report_task(instructions, params_file, overrides or [], robustness, ablation)
    print(f"report: {page}")
    return page


def run_report(instructions: Path, params_file: Path, overrides: list[str], robustness: Path | None = None,
               ablation: Path | None = None) -> str:
    with prefect_api():
        return report_flow(str(Path(instructions).resolve()), str(Path(params_file).resolve()), list(overrides),
                           *(str(Path(path).resolve()) if path else None for path in (robustness, ablation)))
