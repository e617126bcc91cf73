"""Instruction examples as a Prefect flow: build the set from a shard version, then its contract."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from deepmolm.config import load_params
from flows.api import prefect_api


@task(name="build-and-check-instructions")
def instructions_task(shards: str, out_root: str | None, params_file: str, overrides: list[str]) -> dict:
    from deepmolm.data.contracts.gate import build_checked_instructions

    params = load_params(Path(params_file), overrides)
    return build_checked_instructions(Path(shards), Path(out_root) if out_root else params.paths.instructions_dir, params)


@flow(name="instructions", log_prints=True)
def instructions_flow(shards: str, out_root: str | None = None, params_file: str = "params.yaml",
                      overrides: list[str] | None = None) -> dict:
    summary = instructions_task(shards, out_root, params_file, overrides or [])
    print(f"instruction set {summary['out']}: {summary['examples_by_task']}, contract "
          f"{'passed' if summary['contract']['success'] else 'FAILED: ' + ', '.join(summary['contract']['failed'])}")
    return summary


def run_instructions(shards: Path, out_root: Path | None, params_file: Path, overrides: list[str]) -> dict:
    with prefect_api():
        return instructions_flow(str(Path(shards).resolve()), str(Path(out_root).resolve()) if out_root else None,
                                 str(Path(params_file).resolve()), list(overrides))
