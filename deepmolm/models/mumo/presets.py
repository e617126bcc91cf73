"""From params.yaml's `mumo` section to a MuMoConfig, and parameter counts without weights."""

from __future__ import annotations

import torch

from deepmolm.config import ConfigError, Params
from deepmolm.models.mumo.configuration import MuMoConfig
from deepmolm.models.mumo.modeling import MuMoForPropertyPrediction

# The SMILES vocabulary is learnt from the data; a summary without a tokenizer counts this many
# tokens (ChEBI-20 and MoleculeNet together have under 200 distinct pieces).
SUMMARY_VOCAB = 512


def mumo_config(params: Params, preset: str | None = None, *, vocab_size: int = SUMMARY_VOCAB,
                injection_layer: int | None = None, num_targets: int = 1, target_kind: str = "regression") -> MuMoConfig:
    name = preset or params.mumo.preset
    if name not in params.mumo.presets:
        raise ConfigError(f"unknown MuMo preset {name!r} (params.yaml mumo.presets: {', '.join(params.mumo.presets)})")
    chosen = params.mumo.presets[name]
    layer = injection_layer or params.mumo.injection_layer
    if not 1 <= layer <= chosen.num_hidden_layers:
        raise ConfigError(f"mumo.injection_layer {layer}: preset {name} has layers 1..{chosen.num_hidden_layers}")
    return MuMoConfig(vocab_size=vocab_size, injection_layer=layer, num_targets=num_targets, target_kind=target_kind,
                      **chosen.model_dump())


def mumo_summary(config: MuMoConfig) -> dict:
    """Parameter counts per block, on the meta device (the paper preset is never allocated)."""
    with torch.device("meta"):
        model = MuMoForPropertyPrediction(config)

    def count(module) -> int:
        return sum(p.numel() for p in module.parameters())

    core = model.mumo
    kinds = config.layer_kinds()
    blocks = {
        "embeddings": count(core.embeddings),
        "graph_encoder": count(core.graph_encoder),
        "mamba_layers": sum(count(layer) for layer, kind in zip(core.layers, kinds, strict=True) if kind == "mamba"),
        "attention_layers": sum(count(layer) for layer, kind in zip(core.layers, kinds, strict=True) if kind == "attention"),
        "injection": count(core.injections),
        "head": count(model.head),
    }
    total = count(model)
    blocks["other"] = total - sum(blocks.values())  # the final norm
    return {
        "family": "mumo",
        "blocks": blocks,
        "total": total,
        "hidden_size": config.hidden_size,
        "layers": kinds,
        "injected_layers": config.injected_layers(),
        "vocab_size": config.vocab_size,
    }
