"""Validation as a Prefect flow: the data contract of a shard version, then its data-quality page.

The page is written whether or not the contract passes (a failed refresh is when people look at
it); the flow fails afterwards when a critical expectation failed, so a deployment's run shows red.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from deepmolm.config import load_params
from deepmolm.reports.data_quality import validate_with_report
from flows.api import prefect_api


class ContractFailed(RuntimeError):
    pass


@task(name="validate-shard-version")
def validate_task(shards: str, params_file: str, overrides: list[str], report: bool) -> dict:
    return validate_with_report(Path(shards), load_params(Path(params_file), overrides), report=report)


@flow(name="validate", log_prints=True)
def validate_flow(shards: str, params_file: str = "params.yaml", overrides: list[str] | None = None,
                  report: bool = True, raise_on_failure: bool = True) -> dict:
    summary = validate_task(shards, params_file, overrides or [], report)
    print(f"data contract of {summary['target']}: {'passed' if summary['success'] else 'FAILED'}, "
          f"{summary['evaluated']} evaluated, failed {summary['failed'] or 'none'}, warnings {summary['warnings'] or 'none'}")
    if raise_on_failure and not summary["success"]:
        raise ContractFailed(f"critical expectations failed: {', '.join(summary['failed'])}")
    return summary


def run_validate(shards: Path, params_file: Path, overrides: list[str], *, report: bool = True) -> dict:
    """The flow on the configured Prefect API (or a temporary one); returns the summary, pass or fail."""
    with prefect_api():
        return validate_flow(str(Path(shards).resolve()), str(Path(params_file).resolve()), list(overrides),
                             report, raise_on_failure=False)
