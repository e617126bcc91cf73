"""From params.yaml's `model` section to a DeepMoLMConfig, and parameter counts without weights."""

from __future__ import annotations

import torch

from deepmolm.config import ConfigError, Params
from deepmolm.models.deepmolm.configuration import DeepMoLMConfig
from deepmolm.models.deepmolm.deep_encoder import parameter_counts
from deepmolm.models.deepmolm.modeling import DeepMoLMForCausalLM


def model_config(params: Params, preset: str | None = None, *, vocab_size: int | None = None,
                 image_token_id: int = 0, number_token_id: int = 0) -> DeepMoLMConfig:
    """The preset's sizes, the fusion variant, the number head, and E3FP's bits and levels from
    featurization (the embedding table must fit the identifiers the shards hold)."""
    name = preset or params.model.preset
    if name not in params.model.presets:
        raise ConfigError(f"unknown model preset {name!r} (params.yaml model.presets: {', '.join(params.model.presets)})")
    chosen = params.model.presets[name]
    language = chosen.language.model_dump()
    if vocab_size is not None:
        language["vocab_size"] = vocab_size
    e3fp = params.featurize.e3fp
    return DeepMoLMConfig(
        encoder=chosen.encoder.model_dump(),
        fusion={**chosen.fusion.model_dump(), "variant": params.model.fusion_variant, "e3fp_bits": e3fp.bits,
                "e3fp_levels": e3fp.level + 1},
        language=language,
        image_token_id=image_token_id,
        number_head=params.model.number_head,
        number_token_id=number_token_id,
        number_loss_coef=params.model.number_loss_coef,
    )


def model_summary(config: DeepMoLMConfig) -> dict:
    """Parameter counts per block, on the meta device: the paper's 8B model is never allocated."""
    with torch.device("meta"):
        model = DeepMoLMForCausalLM(config)
    lm = model.language_model
    blocks = {
        "encoder.sam": parameter_counts(model.encoder.sam)["total"],
        "encoder.compressor": parameter_counts(model.encoder.compressor)["total"],
        "encoder.clip": parameter_counts(model.encoder.clip)["total"],
        "projector": parameter_counts(model.projector)["total"],
        "language_model.embeddings": lm.get_input_embeddings().weight.numel(),
        "language_model.layers": sum(p.numel() for p in lm.model.layers.parameters()),
    }
    total = sum(p.numel() for p in model.parameters())
    blocks["language_model.other"] = total - sum(blocks.values())  # final norm and an untied lm_head
    spec = config.encoder_spec()
    return {
        "blocks": blocks,
        "encoder": blocks["encoder.sam"] + blocks["encoder.compressor"] + blocks["encoder.clip"],
        "total": total,
        "visual_tokens": spec.tokens,
        "visual_dim": spec.out_dim,
        "hidden_size": config.qwen2().hidden_size,
        "image_size": spec.image_size,
        "fusion_variant": config.fusion["variant"],
    }
