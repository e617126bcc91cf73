"""Pretrained weights from checkpoints in transformers' own layouts, written here at tiny sizes."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPConfig, CLIPModel, Qwen2ForCausalLM, SamConfig, SamModel

from deepmolm.config import load_params
from deepmolm.models.deepmolm.modeling import DeepMoLMForCausalLM
from deepmolm.models.deepmolm.presets import model_config
from deepmolm.models.deepmolm.weights import WeightsError, load_pretrained_part
from tests.conftest import PARAMS


@pytest.fixture
def model():
    torch.manual_seed(0)
    return DeepMoLMForCausalLM(model_config(load_params(PARAMS, []), "tiny"))


def test_sam_clip_and_qwen2_checkpoints_load_into_their_places(model, tmp_path):
    config = model.config
    sam = SamModel(SamConfig(vision_config=config.encoder_spec().sam_config().to_dict()))
    sam.save_pretrained(tmp_path / "sam")
    clip_vision = config.encoder_spec().clip_config().to_dict()
    clip_vision.update(image_size=8, patch_size=4)  # 2 x 2 patches + class = the tiny encoder's positions
    clip = CLIPModel(CLIPConfig(vision_config=clip_vision, text_config={"hidden_size": 16, "intermediate_size": 32,
                                                                        "num_hidden_layers": 1, "num_attention_heads": 2}))
    clip.save_pretrained(tmp_path / "clip")
    lm = Qwen2ForCausalLM(config.qwen2())
    lm.save_pretrained(tmp_path / "lm")

    reports = [load_pretrained_part(model, "sam", tmp_path / "sam"), load_pretrained_part(model, "clip", tmp_path / "clip"),
               load_pretrained_part(model, "language", tmp_path / "lm")]
    assert all(r["loaded"] > 0 for r in reports) and reports[0]["skipped"] > 0, "SAM's decoder is skipped"
    torch.testing.assert_close(model.encoder.sam.layers[1].attn.qkv.weight, sam.vision_encoder.layers[1].attn.qkv.weight)
    vision = getattr(clip, "vision_model", clip)
    torch.testing.assert_close(model.encoder.clip.encoder.layers[0].mlp.fc1.weight, vision.encoder.layers[0].mlp.fc1.weight)
    torch.testing.assert_close(model.encoder.clip.position_embedding.weight, vision.embeddings.position_embedding.weight)
    torch.testing.assert_close(model.language_model.model.layers[1].mlp.up_proj.weight, lm.model.layers[1].mlp.up_proj.weight)


def test_pickles_shapes_and_unknown_parts_are_refused(model, tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(WeightsError, match="pickled weights are not loaded"):
        load_pretrained_part(model, "sam", tmp_path)
    with pytest.raises(WeightsError, match="pickled weights are not loaded"):
        load_pretrained_part(model, "sam", tmp_path / "pytorch_model.bin")
    bigger = model_config(load_params(PARAMS, ["model.presets.tiny.language.hidden_size=96"]), "tiny").qwen2()
    Qwen2ForCausalLM(bigger).save_pretrained(tmp_path / "lm")
    with pytest.raises(WeightsError, match="has shape"):
        load_pretrained_part(model, "language", tmp_path / "lm")
    with pytest.raises(WeightsError, match="unknown part 'projector'"):
        load_pretrained_part(model, "projector", tmp_path / "lm")
