"""DeepEncoder: shapes, the paper's size, and our CLIP wiring against transformers' own CLIP."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPVisionModel

from deepmolm.models.deepmolm.deep_encoder import (
    ClipOnTokens,
    DeepEncoder,
    DeepEncoderSpec,
    TokenCompressor,
    parameter_counts,
)

TINY = DeepEncoderSpec(image_size=64, patch_size=8, sam_hidden=32, sam_layers=2, sam_heads=2, sam_window=4,
                       sam_global_layers=(1,), sam_neck=16, compressor=(24, 32), clip_layers=2, clip_heads=2,
                       clip_mlp=64)


def test_tiny_encoder_gives_one_token_per_4x4_patches_of_sam_and_clip_channels():
    torch.manual_seed(0)
    out = DeepEncoder(TINY).eval()(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, TINY.tokens, TINY.out_dim) == (2, 4, 64)
    assert torch.isfinite(out).all()


def test_paper_size_counts_without_allocating():
    spec = DeepEncoderSpec()
    with torch.device("meta"):
        encoder = DeepEncoder(spec)
        compressed = TokenCompressor(256, (512, 1024))(torch.empty(1, 256, 64, 64))
    assert (spec.grid, spec.tokens, spec.out_dim) == (64, 256, 2048)
    assert compressed.shape == (1, 1024, 16, 16), "16x fewer tokens"
    counts = parameter_counts(encoder)
    assert 80e6 <= counts["sam"] <= 95e6 and 295e6 <= counts["clip"] <= 310e6
    assert 370e6 <= counts["total"] <= 410e6


def test_clip_on_tokens_matches_transformers_clip_fed_the_same_patch_embeddings():
    spec = DeepEncoderSpec(image_size=64, patch_size=8, compressor=(24, 32), clip_layers=2, clip_heads=2, clip_mlp=64)
    config = spec.clip_config()
    config.image_size, config.patch_size = 8, 4  # 2 x 2 patches = spec.tokens
    torch.manual_seed(0)
    reference = CLIPVisionModel(config).eval()
    ours = ClipOnTokens(spec.clip_config(), spec.tokens).eval()
    embeddings = reference.embeddings
    ours.class_embedding.data.copy_(embeddings.class_embedding.data)
    ours.position_embedding.load_state_dict(embeddings.position_embedding.state_dict())
    ours.pre_layrnorm.load_state_dict(reference.pre_layrnorm.state_dict())
    ours.encoder.load_state_dict(reference.encoder.state_dict())
    pixels = torch.randn(2, 3, 8, 8)
    patches = embeddings.patch_embedding(pixels).flatten(2).transpose(1, 2)
    with torch.no_grad():
        torch.testing.assert_close(ours(patches), reference(pixel_values=pixels).last_hidden_state)


def test_image_size_must_fit_the_compressor():
    with pytest.raises(ValueError, match="multiple of 4 x patch_size"):
        DeepEncoderSpec(image_size=100, patch_size=16)


def test_a_random_encoder_sees_the_drawing():
    """transformers' SAM config starts its weights at std 1e-10 (meant to be overwritten by the
    release); trained from there, SAM's output was ~1e-21 whatever the drawing, and the model answered
    a blank picture as it answered the molecule. A random start must tell the two apart."""
    from rdkit import Chem

    from deepmolm.data.featurize.render import draw_png
    from deepmolm.models.deepmolm.processing import image_pixels, normalise_pixels

    torch.manual_seed(0)
    encoder = DeepEncoder(TINY).eval()
    drawing = image_pixels(draw_png(Chem.MolFromSmiles("CC(=O)Oc1ccccc1C(=O)O"), size=256, bond_line_width=2.0,
                                    padding=0.05), TINY.image_size)
    pixels = normalise_pixels(torch.stack([drawing, torch.full_like(drawing, 255)]), TINY)
    with torch.no_grad():
        sam = encoder.sam(pixel_values=pixels).last_hidden_state
        out = encoder(pixels)
    assert 0.005 < encoder.sam.patch_embed.projection.weight.std() < 0.05
    assert (sam[0] - sam[1]).norm() > 0.2 * sam[1].norm()
    assert (out[0] - out[1]).norm() > 0.05 * out[1].norm()
