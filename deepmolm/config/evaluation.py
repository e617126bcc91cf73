"""Sections of evaluation and serving: the retrieval baseline, the evaluate stage, the web page's limits."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    field_validator,
)

from deepmolm.config.base import ProjectPath, Split, _Section
from deepmolm.config.data import PropertyName
from deepmolm.config.models import FusionVariant


class BaselineParams(_Section):
    fingerprint: Literal["morgan", "e3fp"] = Field(description="similarity for the retrieval baseline")
    morgan_radius: int = Field(ge=0, le=6)
    morgan_bits: int = Field(ge=64, le=1 << 16)


class RestyleParams(_Section):
    bond_line_width: float = Field(gt=0, description="px of the 1024-px drawing (training's: featurize.render)")
    font_size: int = Field(ge=6, le=200, description="atom labels at this fixed size in px")
    stereo_wedges: bool = Field(description="false: stereo bonds drawn as plain lines")


class RobustnessParams(_Section):
    max_molecules: int | None = Field(ge=1, description="the first N molecules of eval.splits, all their examples; "
                                                        "null: every one")
    seed: int = Field(ge=0, description="of the coordinate noise (drawn per molecule)")
    coordinate_noise: list[float] = Field(description="sigmas in Angstrom of Gaussian noise on every coordinate")
    jpeg_quality: int = Field(ge=1, le=95)
    blur_radius: float = Field(gt=0, description="Gaussian blur radius in px of the 1024-px drawing")
    restyle: RestyleParams

    @field_validator("coordinate_noise")
    @classmethod
    def _positive(cls, sigmas: list[float]) -> list[float]:
        if any(s <= 0 for s in sigmas) or len(set(sigmas)) != len(sigmas):
            raise ValueError(f"coordinate_noise {sigmas}: distinct sigmas above 0 (0 is the 'coords_recomputed' row)")
        return sigmas


class DrawingDependenceParams(_Section):
    molecules: int | None = Field(ge=1, description="held-out molecules answered again (all their examples), "
                                                    "drawn with `seed`; null: every one")
    seed: int = Field(ge=0, description="which molecules")


class AblationParams(_Section):
    variants: list[FusionVariant] = Field(min_length=1, description="model.fusion_variant values, each trained through both stages")
    without_stage1: list[FusionVariant] = Field(description="variants trained once more with stage 1 skipped "
                                                            "(train.stage1.epochs=0)")
    seeds: list[int] = Field(min_length=1, description="train.seed of every cell: the spread over seeds")
    out: ProjectPath = Field(description="ablation.json and ablation.md: the grid's table")

    @field_validator("variants", "without_stage1", "seeds")
    @classmethod
    def _distinct(cls, values: list) -> list:
        if len(set(values)) != len(values):
            raise ValueError(f"{values}: each at most once")
        return values


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
    drawing_dependence: DrawingDependenceParams = Field(
        description="the evaluate stage answers a subset again with a blank drawing and without E3FP")
    robustness: RobustnessParams = Field(description="`deepmolm eval robustness`: answers from perturbed inputs")
    ablation: AblationParams = Field(description="`deepmolm eval ablation`: the paper's ablations as queued DVC experiments")

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
    shutdown_grace_s: float = Field(gt=0, description="after Ctrl-C, requests still open this long are cut off")
