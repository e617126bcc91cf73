"""DeepMoLM as a transformers model: DeepEncoder -> Fusion Projector -> a Qwen2-family causal LM.

The prompt holds one `<image>` placeholder token per visual token (the loader expands the single
`<image>` of the template to `encoder tokens` copies); their input embeddings are replaced by the
projected visual tokens, everything else is the LM's own embedding. Labels are the loader's (-100 on
prompt and image positions). `DeepMoLMConfig` (configuration.py) / `save_pretrained` /
`from_pretrained` follow transformers' conventions, so checkpoints are safetensors plus config.json.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    PreTrainedModel,
    Qwen2ForCausalLM,
)
from transformers.generation import GenerationMixin

from deepmolm.models.deepmolm.configuration import DeepMoLMConfig
from deepmolm.models.deepmolm.deep_encoder import DeepEncoder
from deepmolm.models.deepmolm.fusion import build_projector


class DeepMoLMForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = DeepMoLMConfig
    base_model_prefix = "deepmolm"
    supports_gradient_checkpointing = False

    def __init__(self, config: DeepMoLMConfig):
        super().__init__(config)
        self.encoder = DeepEncoder(config.encoder_spec())
        self.projector = build_projector(config.fusion_spec())
        self.language_model = Qwen2ForCausalLM(config.qwen2())
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # the parts initialise themselves (transformers' SAM and Qwen2 do, torch does the rest)
        return

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def visual_tokens(self, pixel_values: torch.Tensor, e3fp: torch.Tensor | None) -> torch.Tensor:
        """[B, 3, S, S], [B, atoms, levels] -> [B, encoder tokens, LM hidden size]."""
        return self.projector(self.encoder(pixel_values), e3fp)

    def input_embeddings(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None,
                         e3fp: torch.Tensor | None) -> torch.Tensor:
        embeds = self.get_input_embeddings()(input_ids)
        if pixel_values is None:
            return embeds
        visual = self.visual_tokens(pixel_values, e3fp)
        placeholders = input_ids == self.config.image_token_id
        per_sample = placeholders.sum(dim=1)
        if not bool((per_sample == visual.shape[1]).all()):
            raise ValueError(f"each prompt needs {visual.shape[1]} <image> tokens, got {per_sample.tolist()}")
        return embeds.masked_scatter(placeholders[..., None], visual.to(embeds.dtype))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None, e3fp: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **kwargs):
        embeds = self.input_embeddings(input_ids, pixel_values, e3fp)
        return self.language_model(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **kwargs)

    @torch.no_grad()
    def generate_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor,
                      e3fp: torch.Tensor | None, **generate_kwargs) -> torch.Tensor:
        """New token ids only (greedy by default; `num_beams` > 1 for beam search)."""
        embeds = self.input_embeddings(input_ids, pixel_values, e3fp)
        return self.language_model.generate(inputs_embeds=embeds, attention_mask=attention_mask, **generate_kwargs)


# transformers' Auto classes know the model type, so a checkpoint directory (config.json with
# model_type "deepmolm") loads with AutoConfig / AutoModelForCausalLM, and AutoTokenizer reading
# the same directory does not warn about an unknown model type.
AutoConfig.register(DeepMoLMConfig.model_type, DeepMoLMConfig, exist_ok=True)
AutoModelForCausalLM.register(DeepMoLMConfig, DeepMoLMForCausalLM, exist_ok=True)
