"""Sections of evaluation and serving: the retrieval baseline, the evaluate stage, the web page's limits."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    field_validator,
)

from deepmolm.config.base import ProjectPath, Split, _Section
from deepmolm.config.data import PropertyName


class BaselineParams(_Section):
    fingerprint: Literal["morgan", "e3fp"] = Field(description="similarity for the retrieval baseline")
    morgan_radius: int = Field(ge=0, le=6)
    morgan_bits: int = Field(ge=64, le=1 << 16)


class EvalParams(_Section):
    tokenizer: ProjectPath = Field(description="local Hugging Face tokenizer directory for the caption metrics")
    max_tokens: int = Field(ge=1, description="tokens per caption kept for the metrics (MolT5: 512)")
    nltk_data: ProjectPath = Field(description="where the offline WordNet corpus for METEOR is prepared")
    property_ranges: dict[PropertyName, tuple[float, float]] = Field(
        description="plausible [low, high] per property; an answer outside is not valid"
    )
    baseline: BaselineParams
    splits: list[Split] = Field(min_length=1, description="held-out splits the model and the baseline answer")
    on_holdout: bool = Field(description="answer train.holdout's molecules instead of eval.splits (for tuning a "
                                          "recipe without looking at the test split)")
    max_examples_per_task: int | None = Field(ge=1, description="cap per task (a quick look); null: every example")
    batch_size: int = Field(ge=1, description="prompts generated together")
    property_max_new_tokens: int = Field(ge=1, description="answer length budget of a property question")

    @field_validator("property_ranges")
    @classmethod
    def _ordered(cls, ranges: dict) -> dict:
        for name, (low, high) in ranges.items():
            if not low < high:
                raise ValueError(f"property_ranges.{name}: low {low} must be below high {high}")
        return ranges


class ServeParams(_Section):
    host: str = Field(min_length=1, description="interface `deepmolm serve` binds to; one other than loopback needs --public")
    port: int = Field(ge=0, le=65535, description="0: any free port")
    concurrency: int = Field(ge=1, description="answers computed at once; other requests wait their turn")
    max_waiting: int = Field(ge=0, description="requests waiting for a turn beyond which the server answers 503")
    wait_timeout_s: float = Field(gt=0, description="a request that waited this long for a turn gets 503")
    max_smiles_chars: int = Field(ge=1, description="a longer SMILES is refused (413)")
    max_prompt_chars: int = Field(ge=1, description="a longer prompt is refused (413)")
    max_upload_bytes: int = Field(ge=1024, description="a larger drawing or SDF is refused (413)")
    max_query_chars: int = Field(ge=1, description="a longer browse query (CID, words, SMARTS) is refused (413)")
    page_size: int = Field(ge=1, le=200, description="molecules per page of the browse gallery")
