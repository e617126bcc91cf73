"""Validation as a Prefect flow: the data contract of a shard version, then its data-quality page.

The page is written whether or not the contract passes (a failed refresh is when people look at
it); the flow fails afterwards when a critical expectation failed, so a deployment's run shows red.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from deepmolm.config import load_params
from deepmolm.data.contracts.gate import ContractResult, validate_shard_version
from deepmolm.reports.data_quality import write_data_report
from flows.api import prefect_api


class ContractFailed(RuntimeError):
    pass


@task(name="run-data-contract")
def contract_task(shards: str, params_file: str, overrides: list[str]) -> ContractResult:
    return validate_shard_version(Path(shards), load_params(Path(params_file), overrides))


@task(name="write-data-report")
def report_task(result: ContractResult, params_file: str, overrides: list[str]) -> str:
    return str(write_data_report(Path(result.target), load_params(Path(params_file), overrides), result))


@flow(name="validate", log_prints=True)
def validate_flow(shards: str, params_file: str = "params.yaml", overrides: list[str] | None = None,
                  report: bool = True, raise_on_failure: bool = True) -> dict:
    overrides = overrides or []
    result = contract_task(shards, params_file, overrides)
    summary = result.as_dict()
    if report:
        summary["report"] = report_task(result, params_file, overrides)
    print(f"data contract of {result.target}: {'passed' if result.success else 'FAILED'}, "
          f"{result.evaluated} evaluated, failed {result.failed or 'none'}, warnings {result.warnings or 'none'}")
    if raise_on_failure and not result.success:
        raise ContractFailed(f"critical expectations failed: {', '.join(result.failed)}")
    return summary


def run_validate(shards: Path, params_file: Path, overrides: list[str], *, report: bool = True) -> dict:
    """The flow on the configured Prefect API (or a temporary one); returns the summary, pass or fail."""
    with prefect_api():
        return validate_flow(str(Path(shards).resolve()), str(Path(params_file).resolve()), list(overrides),
                             report, raise_on_failure=False)
