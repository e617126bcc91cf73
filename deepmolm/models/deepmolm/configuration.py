"""DeepMoLMConfig: the encoder, fusion and language-model sizes a checkpoint's config.json holds.

The three sections stay plain dicts in config.json (the format every exported model has: a typed
sub-config would serialise all of Qwen2Config's defaults and change every checkpoint's bytes). The
frozen specs the modules are built from are derived from those dicts once per distinct content;
`qwen2()` builds a new Qwen2Config each call, because transformers' model classes write into theirs.
"""

from __future__ import annotations

import functools
import json

from transformers import PreTrainedConfig, Qwen2Config

from deepmolm.models.deepmolm.deep_encoder import DeepEncoderSpec
from deepmolm.models.deepmolm.fusion import FusionSpec


class DeepMoLMConfig(PreTrainedConfig):
    model_type = "deepmolm"

    def __init__(self, encoder: dict | None = None, fusion: dict | None = None, language: dict | None = None,
                 image_token_id: int = 0, number_head: bool = False, number_token_id: int = 0,
                 number_loss_coef: float = 1.0, number_head_per_view: bool = False, **kwargs):
        self.encoder = dict(encoder or {})
        self.fusion = dict(fusion or {})
        self.language = dict(language or {})  # Qwen2Config fields (not `text_config`: transformers expects a config object there)
        self.image_token_id = image_token_id
        self.number_head = number_head  # property numbers through a regression head at a <num> slot (modeling.py)
        self.number_token_id = number_token_id
        self.number_loss_coef = number_loss_coef
        self.number_head_per_view = number_head_per_view  # a second head for molecules without E3FP (modeling.py)
        super().__init__(**kwargs)

    def encoder_spec(self) -> DeepEncoderSpec:
        return _encoder_spec(json.dumps(self.encoder, sort_keys=True))

    def fusion_spec(self) -> FusionSpec:
        return _fusion_spec(json.dumps(self.encoder, sort_keys=True), json.dumps(self.fusion, sort_keys=True),
                            json.dumps(self.language, sort_keys=True))

    def qwen2(self) -> Qwen2Config:
        return Qwen2Config(**self.language)


@functools.lru_cache(maxsize=64)
def _encoder_spec(encoder: str) -> DeepEncoderSpec:
    spec = json.loads(encoder)
    for key in ("sam_global_layers", "compressor", "pixel_mean", "pixel_std"):
        if key in spec:
            spec[key] = tuple(spec[key])
    return DeepEncoderSpec(**spec)


@functools.lru_cache(maxsize=64)
def _fusion_spec(encoder: str, fusion: str, language: str) -> FusionSpec:
    return FusionSpec(visual_dim=_encoder_spec(encoder).out_dim, hidden_size=Qwen2Config(**json.loads(language)).hidden_size,
                      **json.loads(fusion))
