"""The tokenizer artifact as a Prefect flow (a real LLM's tokenizer as given, or a BPE trained here)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from deepmolm.config import load_params
from flows.api import prefect_api


@task(name="build-tokenizer")
def tokenizer_task(instructions: str, out: str, params_file: str, overrides: list[str]) -> dict:
    from deepmolm.data.instructions import resolve_instruction_set
    from deepmolm.models.deepmolm.tokenizer import build_tokenizer

    params = load_params(Path(params_file), overrides)
    return build_tokenizer(resolve_instruction_set(Path(instructions)), Path(out), params)


@flow(name="tokenizer", log_prints=True)
def tokenizer_flow(instructions: str, out: str, params_file: str = "params.yaml", overrides: list[str] | None = None) -> dict:
    summary = tokenizer_task(instructions, out, params_file, overrides or [])
    print(f"tokenizer in {summary['out']}: {summary['vocab_size']} tokens ({summary['source']})")
    return summary


def run_tokenizer(instructions: Path, out: Path, params_file: Path, overrides: list[str]) -> dict:
    with prefect_api():
        return tokenizer_flow(str(Path(instructions).resolve()), str(Path(out).resolve()),
                              str(Path(params_file).resolve()), list(overrides))
