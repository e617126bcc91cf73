"""Sections of the DeepMoLM model: presets (encoder, fusion, language model) and generation."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from deepmolm.config.base import ProjectPath, _Section



FusionVariant = Literal["fusion", "fusion_zero_e3fp", "concat", "linear"]  # the Fusion Projector and the paper's ablations

class EncoderParams(_Section):
    image_size: int = Field(ge=16, description="drawings are resized to this square size for the encoder")
    patch_size: int = Field(ge=2)
    sam_hidden: int = Field(ge=8)
    sam_layers: int = Field(ge=1)
    sam_heads: int = Field(ge=1)
    sam_window: int = Field(ge=1, description="windowed attention size (patches)")
    sam_global_layers: list[int] = Field(description="layers with global attention")
    sam_neck: int = Field(ge=4)
    compressor: list[int] = Field(min_length=2, max_length=2, description="channels of the two stride-2 convolutions")
    clip_layers: int = Field(ge=1)
    clip_heads: int = Field(ge=1)
    clip_mlp: int = Field(ge=4)


class FusionParams(_Section):
    num_heads: int = Field(ge=1)
    ffn_mult: int = Field(ge=1)
    dropout: float = Field(ge=0, lt=1)
    size_features: bool = Field(False, description="add an embedding of the heavy-atom count to every visual token "
                                                   "(not in the paper; see deepmolm/models/deepmolm/fusion.py)")
    e3fp_sum: bool = Field(False, description="add a projection of the sum of the E3FP tokens to every visual token: "
                                              "additive properties (TPSA, logP) are sums over atoms (not in the paper)")


class LanguageParams(_Section):
    vocab_size: int = Field(ge=16, description="replaced by the tokenizer's size when a model is built for training")
    hidden_size: int = Field(ge=8)
    intermediate_size: int = Field(ge=8)
    num_hidden_layers: int = Field(ge=1)
    num_attention_heads: int = Field(ge=1)
    num_key_value_heads: int = Field(ge=1)
    max_position_embeddings: int = Field(ge=16)
    rope_theta: float = Field(gt=0)
    tie_word_embeddings: bool


class PresetParams(_Section):
    encoder: EncoderParams
    fusion: FusionParams
    language: LanguageParams


class GenerationParams(_Section):
    max_new_tokens: int = Field(ge=1)
    min_new_tokens: int = Field(ge=0, description="captions only: no caption ends before this many tokens (0: off)")
    num_beams: int = Field(ge=1, description="1: greedy decoding")
    repetition_penalty: float = Field(ge=1, description="transformers' repetition penalty (1: none)")
    no_repeat_ngram_size: int = Field(ge=0, description="no token n-gram of this size twice in an answer (0: off)")
    number_digits: Literal["likeliest", "median"] = Field(
        description="property answers: each digit after a number's first the likeliest (greedy) or at the running "
                    "median of the model's distribution over the number (generation.MedianDigits)")

    @model_validator(mode="after")
    def _consistent(self) -> GenerationParams:
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(f"min_new_tokens {self.min_new_tokens} is above max_new_tokens {self.max_new_tokens}")
        if self.number_digits == "median" and self.num_beams > 1:
            raise ValueError("number_digits median follows one answer digit by digit: it needs num_beams 1")
        return self

    def decoding(self) -> dict:
        """The keyword arguments of `generate` every task starts from (generation.task_decoding adds the rest)."""
        return {"num_beams": self.num_beams, "repetition_penalty": self.repetition_penalty,
                "no_repeat_ngram_size": self.no_repeat_ngram_size}


class ModelParams(_Section):
    preset: str = Field(description="one of the presets below")
    tokenizer_dir: ProjectPath | None = Field(
        description="a local Hugging Face tokenizer directory (a real LLM's); null: a byte-level BPE trained on the instructions"
    )
    bpe_vocab_size: int = Field(ge=300, description="vocabulary of the trained byte-level BPE")
    max_length: int = Field(ge=16, description="tokens per training example, image placeholders included")
    generation: GenerationParams
    fusion_variant: FusionVariant = Field(
        description="fusion (default); the paper's ablations: fusion_zero_e3fp, concat, linear"
    )
    number_head: bool = Field(description="property answers write their number as a <num> slot that a regression "
                                          "head fills (not in the paper; see deepmolm/models/deepmolm/modeling.py)")
    number_loss_coef: float = Field(gt=0, description="a <num> slot's L1 error counts as this many tokens' loss")
    presets: dict[str, PresetParams]

    @field_validator("presets")
    @classmethod
    def _some(cls, presets: dict) -> dict:
        if not presets:
            raise ValueError("at least one preset is needed")
        return presets
