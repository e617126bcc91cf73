"""DeepEncoder: a molecule drawing -> 256 visual tokens of 2,048 dims (at the paper's size).

Three stages, as in DeepSeek-OCR's encoder:
  1. SAM-ViT-B: 16-pixel patches (1024 px -> 64 x 64 tokens), 12 layers of 768 dims, windowed
     attention (14 x 14) with global attention at layers 2, 5, 8, 11, and a neck to 256 channels.
     transformers' SamVisionEncoder, used as is.
  2. The token compressor: two 3 x 3 convolutions of stride 2 (256 -> 512 -> 1,024 channels), so
     64 x 64 -> 16 x 16 = 256 tokens: 16x fewer.
  3. CLIP-L: a 24-layer, 1,024-dim transformer (transformers' CLIPEncoder) that takes the compressed
     tokens as its patch embeddings: a class token and position embeddings are added and the
     pre-LayerNorm applied, as CLIP does after its own patch convolution.
The output concatenates CLIP's patch tokens (class token dropped) with the compressed SAM tokens,
channel-wise: [B, 256, 1,024 + 1,024].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import CLIPVisionConfig, SamVisionConfig
from transformers.models.clip.modeling_clip import CLIPEncoder
from transformers.models.sam.modeling_sam import SamVisionEncoder


# transformers' SamVisionConfig initialises weights with a standard deviation of 1e-10, harmless when
# the released weights are loaded over them and fatal when SAM trains from random: every layer then
# scales its input by ~1e-10, the neck's output is ~1e-21 whatever the drawing, and no gradient
# reaches the patch embedding. A random SAM starts as ViTs do instead (CLIP's own default).
SAM_INIT_STD = 0.02


@dataclass(frozen=True)
class DeepEncoderSpec:
    image_size: int = 1024
    patch_size: int = 16
    sam_hidden: int = 768
    sam_layers: int = 12
    sam_heads: int = 12
    sam_window: int = 14
    sam_global_layers: tuple[int, ...] = (2, 5, 8, 11)
    sam_neck: int = 256
    compressor: tuple[int, int] = (512, 1024)
    clip_layers: int = 24
    clip_heads: int = 16
    clip_mlp: int = 4096
    # How pixels are normalised belongs to the weights: CLIP's statistics for towers trained apart
    # (and for random ones), DeepSeek-OCR's 0.5 / 0.5 when its DeepEncoder is loaded (weights.py).
    pixel_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    pixel_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def tokens(self) -> int:
        return (self.grid // 4) ** 2

    @property
    def clip_hidden(self) -> int:
        return self.compressor[-1]

    @property
    def out_dim(self) -> int:
        return self.clip_hidden + self.compressor[-1]

    def __post_init__(self):
        if self.image_size % (4 * self.patch_size):
            raise ValueError(f"image_size {self.image_size} must be a multiple of 4 x patch_size ({4 * self.patch_size})")

    def sam_config(self) -> SamVisionConfig:
        config = SamVisionConfig(hidden_size=self.sam_hidden, num_hidden_layers=self.sam_layers,
                               num_attention_heads=self.sam_heads, image_size=self.image_size,
                               patch_size=self.patch_size, window_size=self.sam_window,
                               global_attn_indexes=list(self.sam_global_layers), output_channels=self.sam_neck,
                               mlp_dim=4 * self.sam_hidden, initializer_range=SAM_INIT_STD)
        config._attn_implementation = "sdpa"
        return config

    def clip_config(self) -> CLIPVisionConfig:
        config = CLIPVisionConfig(hidden_size=self.clip_hidden, intermediate_size=self.clip_mlp,
                                  num_hidden_layers=self.clip_layers, num_attention_heads=self.clip_heads,
                                  hidden_act="quick_gelu")
        config._attn_implementation = "sdpa"  # the encoder is used outside a PreTrainedModel
        return config


class TokenCompressor(nn.Module):
    """[B, C, G, G] -> [B, C'', G/4, G/4] by two stride-2 convolutions."""

    def __init__(self, in_channels: int, channels: tuple[int, int]):
        super().__init__()
        self.down1 = nn.Conv2d(in_channels, channels[0], kernel_size=3, stride=2, padding=1, bias=False)
        self.down2 = nn.Conv2d(channels[0], channels[1], kernel_size=3, stride=2, padding=1, bias=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.down2(self.down1(features))


class ClipOnTokens(nn.Module):
    """CLIP's vision transformer after its patch convolution, fed with given patch embeddings."""

    def __init__(self, config: CLIPVisionConfig, tokens: int):
        super().__init__()
        self.class_embedding = nn.Parameter(torch.randn(config.hidden_size) * 0.02)
        self.position_embedding = nn.Embedding(tokens + 1, config.hidden_size)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = CLIPEncoder(config)

    def forward(self, patch_embeds: torch.Tensor) -> torch.Tensor:
        """[B, T, D] -> [B, T + 1, D] (class token first)."""
        cls = self.class_embedding.expand(len(patch_embeds), 1, -1)
        # positions made here, not kept as a buffer: a buffer made on the meta device (as
        # from_pretrained builds models) would never get values
        positions = torch.arange(patch_embeds.shape[1] + 1, device=patch_embeds.device)
        hidden = torch.cat([cls, patch_embeds], dim=1) + self.position_embedding(positions)[None]
        return self.encoder(inputs_embeds=self.pre_layrnorm(hidden)).last_hidden_state


class DeepEncoder(nn.Module):
    def __init__(self, spec: DeepEncoderSpec):
        super().__init__()
        self.spec = spec
        self.sam = SamVisionEncoder(spec.sam_config())
        self.compressor = TokenCompressor(spec.sam_neck, spec.compressor)
        self.clip = ClipOnTokens(spec.clip_config(), spec.tokens)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] normalised pixels -> [B, tokens, out_dim], in the weights' dtype (a model
        trained in bf16 is saved and loaded in bf16; the processor's pixels are float32)."""
        pixel_values = pixel_values.to(self.sam.patch_embed.projection.weight.dtype)
        features = self.sam(pixel_values=pixel_values).last_hidden_state  # [B, 256, G, G]
        compressed = self.compressor(features).flatten(2).transpose(1, 2)  # [B, tokens, 1024]
        clip = self.clip(compressed)[:, 1:]
        return torch.cat([clip, compressed], dim=-1)


def parameter_counts(module: nn.Module) -> dict[str, int]:
    """Parameters per direct child and in total (works on the meta device: nothing is allocated)."""
    counts = {name: sum(p.numel() for p in child.parameters()) for name, child in module.named_children()}
    counts["total"] = sum(p.numel() for p in module.parameters())
    return counts
