"""Ingest as a Prefect flow: one task that reads a source into a raw-table snapshot.

Runs against the Prefect API named by PREFECT_API_URL when one is configured (the run shows in its
UI), and on a temporary local API otherwise.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from prefect import flow, task

from deepmolm.config import load_params
from deepmolm.data.ingest import IngestRequest, run_ingest


@task(name="ingest-source", retries=0)
def ingest_task(request: dict, params_file: str, overrides: list[str], progress: bool) -> dict:
    params = load_params(Path(params_file), overrides)
    return run_ingest(params, IngestRequest(**request), progress=progress).as_dict()


@flow(name="ingest", log_prints=True)
def ingest_flow(request: dict, params_file: str = "params.yaml", overrides: list[str] | None = None, progress: bool = False) -> dict:
    summary = ingest_task(request, params_file, overrides or [], progress)
    print(
        f"{summary['source']} snapshot {summary['snapshot']}: {summary['input_rows']} input rows = "
        f"{summary['accepted']} accepted + {summary['rejected']} rejected"
    )
    return summary


def run_request(request: IngestRequest, params_file: Path, overrides: list[str], progress: bool) -> dict:
    return ingest_flow(asdict(request), str(params_file), list(overrides), progress)
