"""Encoder pretraining as a Prefect flow: one Ray Train run (the flow records it; Ray Train resumes
from checkpoints, the flow retries nothing by itself)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from deepmolm.config import load_params
from flows.api import prefect_api


@task(name="pretrain-encoder")
def pretrain_encoder_task(shards: str | None, out: str | None, if_used: bool, params_file: str,
                          overrides: list[str]) -> dict:
    from deepmolm.training.encoder.launch import pretrain_encoder

    return pretrain_encoder(load_params(Path(params_file), overrides), shards=Path(shards) if shards else None,
                            out=Path(out) if out else None, if_used=if_used)


@flow(name="pretrain-encoder", log_prints=True)
def pretrain_encoder_flow(shards: str | None = None, out: str | None = None, if_used: bool = False,
                          params_file: str = "params.yaml", overrides: list[str] | None = None) -> dict:
    summary = pretrain_encoder_task(shards, out, if_used, params_file, overrides or [])
    if summary.get("skipped"):
        print(f"encoder not pretrained: {summary['reason']}")
        return summary
    after = summary["held_out_after"] or {}
    print(f"encoder pretrained on {summary['molecules']} molecules in {summary['steps']} steps; held out: "
          f"heavy atoms MAE {after.get('heavy_atoms_mae')} (mean baseline {after.get('heavy_atoms_mae_mean_baseline')})")
    return summary


def run_pretrain_encoder(shards: Path | None, out: Path | None, if_used: bool, params_file: Path,
                         overrides: list[str]) -> dict:
    with prefect_api():
        return pretrain_encoder_flow(str(Path(shards).resolve()) if shards else None,
                                     str(Path(out).resolve()) if out else None, if_used,
                                     str(Path(params_file).resolve()), list(overrides))
