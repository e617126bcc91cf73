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


# What DeepSeek-OCR's checkpoint holds besides the DeepEncoder: read past and reported, never loaded.
NOT_ENCODER = ["model.vision_model.embeddings.patch_embedding.weight", "model.vision_model.embeddings.position_ids",
               "model.projector.layers.weight", "model.image_newline", "model.view_seperator",
               "model.layers.0.self_attn.q_proj.weight", "model.embed_tokens.weight", "lm_head.weight"]


def _deepseek_name(ours: str) -> str | None:
    """Our DeepEncoder key -> DeepSeek-OCR's (q, k and v come back as one fused qkv_proj)."""
    renames = [("encoder.sam.patch_embed.projection.", "model.sam_model.patch_embed.proj."),
               ("encoder.sam.pos_embed", "model.sam_model.pos_embed"),
               ("encoder.sam.neck.conv1.", "model.sam_model.neck.0."), ("encoder.sam.neck.layer_norm1.", "model.sam_model.neck.1."),
               ("encoder.sam.neck.conv2.", "model.sam_model.neck.2."), ("encoder.sam.neck.layer_norm2.", "model.sam_model.neck.3."),
               ("encoder.compressor.down1.", "model.sam_model.net_2."), ("encoder.compressor.down2.", "model.sam_model.net_3."),
               ("encoder.clip.class_embedding", "model.vision_model.embeddings.class_embedding"),
               ("encoder.clip.position_embedding.", "model.vision_model.embeddings.position_embedding."),
               ("encoder.clip.pre_layrnorm.", "model.vision_model.pre_layrnorm."),
               ("encoder.clip.encoder.layers.", "model.vision_model.transformer.layers.")]
    if ours.startswith("encoder.sam.layers."):
        return ours.replace("encoder.sam.layers.", "model.sam_model.blocks.").replace(".layer_norm", ".norm")
    for before, after in renames:
        if ours.startswith(before):
            return ours.replace(before, after).replace("q_proj", "qkv_proj")
    return None


def shard_tensors(directory) -> dict[str, torch.Tensor]:
    """Every tensor of a directory of safetensors shards, by key."""
    from safetensors.torch import load_file

    return {k: v for shard in sorted(directory.glob("*.safetensors")) for k, v in load_file(str(shard)).items()}


def _deepseek_checkpoint(model, directory, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Random weights at the tiny encoder's shapes under DeepSeek-OCR's names, the rest of its
    checkpoint beside them, written as two shards with their index, as the Hub has it (whose
    tensors are bf16: `dtype`)."""
    import json

    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(7)
    ours = {k: v for k, v in model.state_dict().items() if k.startswith("encoder.")}
    source = {}
    for key, tensor in ours.items():
        if ".self_attn.k_proj." in key or ".self_attn.v_proj." in key:
            continue  # part of the fused qkv_proj made at q_proj
        shape = (3 * tensor.shape[0], *tensor.shape[1:]) if ".self_attn.q_proj." in key else tensor.shape
        source[_deepseek_name(key)] = (torch.randn(shape, generator=generator) * 0.2).to(dtype)
    source.update({key: torch.randn(4, 4, generator=generator).to(dtype) for key in NOT_ENCODER})
    keys = sorted(source)
    directory.mkdir()
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, names in shards.items():
        save_file({k: source[k].contiguous() for k in names}, str(directory / name))
    weight_map = {k: name for name, names in shards.items() for k in names}
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return source


def _deepseek_clip(source: dict, patches: torch.Tensor, heads: int) -> torch.Tensor:
    """DeepSeek-OCR's CLIP on given patch embeddings, from its own tensors: fused qkv viewed as
    [B, S, 3, heads, head_dim], quick GELU, pre-LayerNorm."""
    import torch.nn.functional as F

    def get(name):
        return source[f"model.vision_model.{name}"]

    def norm(x, name):
        return F.layer_norm(x, x.shape[-1:], get(f"{name}.weight"), get(f"{name}.bias"), eps=1e-5)

    batch = len(patches)
    x = torch.cat([get("embeddings.class_embedding").expand(batch, 1, -1), patches], dim=1)
    x = norm(x + get("embeddings.position_embedding.weight")[None], "pre_layrnorm")
    layer = 0
    while f"model.vision_model.transformer.layers.{layer}.layer_norm1.weight" in source:
        at = f"transformer.layers.{layer}"
        qkv = F.linear(norm(x, f"{at}.layer_norm1"), get(f"{at}.self_attn.qkv_proj.weight"), get(f"{at}.self_attn.qkv_proj.bias"))
        q, k, v = qkv.view(batch, x.shape[1], 3, heads, -1).unbind(2)
        attended = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        attended = attended.transpose(1, 2).reshape(batch, x.shape[1], -1)
        x = x + F.linear(attended, get(f"{at}.self_attn.out_proj.weight"), get(f"{at}.self_attn.out_proj.bias"))
        hidden = F.linear(norm(x, f"{at}.layer_norm2"), get(f"{at}.mlp.fc1.weight"), get(f"{at}.mlp.fc1.bias"))
        x = x + F.linear(hidden * torch.sigmoid(1.702 * hidden), get(f"{at}.mlp.fc2.weight"), get(f"{at}.mlp.fc2.bias"))
        layer += 1
    return x


def test_deepseek_ocrs_deepencoder_loads_and_computes_what_its_own_layout_computes(model, tmp_path):
    import torch.nn.functional as F

    source = _deepseek_checkpoint(model, tmp_path / "deepseek-ocr")
    report = load_pretrained_part(model, "deepencoder", tmp_path / "deepseek-ocr")
    assert sorted(report["skipped_keys"]) == sorted(NOT_ENCODER), "everything else is reported, nothing lost"
    assert report["loaded"] == sum(1 for k in model.state_dict() if k.startswith("encoder."))

    spec = model.config.encoder_spec()
    pixels = torch.randn(2, 3, spec.image_size, spec.image_size)
    model.eval()
    with torch.no_grad():
        encoded = model.encoder(pixels)
        features = model.encoder.sam(pixel_values=pixels).last_hidden_state  # transformers' SAM, its weights renamed
        compressed = F.conv2d(F.conv2d(features, source["model.sam_model.net_2.weight"], stride=2, padding=1),
                              source["model.sam_model.net_3.weight"], stride=2, padding=1).flatten(2).transpose(1, 2)
        clip = _deepseek_clip(source, compressed, spec.clip_heads)
    torch.testing.assert_close(encoded, torch.cat([clip[:, 1:], compressed], dim=-1), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model.encoder.sam.layers[0].attn.qkv.weight, source["model.sam_model.blocks.0.attn.qkv.weight"])
    torch.testing.assert_close(model.encoder.sam.neck.layer_norm2.bias, source["model.sam_model.neck.3.bias"])

    assert model.config.encoder_spec().pixel_mean == model.config.encoder_spec().pixel_std == (0.5, 0.5, 0.5)
    model.save_pretrained(tmp_path / "exported")  # what stage 2, evaluation, predict and serve load
    exported = DeepMoLMForCausalLM.from_pretrained(tmp_path / "exported", local_files_only=True)
    assert exported.config.encoder_spec().pixel_std == (0.5, 0.5, 0.5), "the normalisation travels with the weights"


def test_a_missing_or_misshapen_deepencoder_weight_is_named(model, tmp_path):
    from safetensors.torch import save_file

    _deepseek_checkpoint(model, tmp_path / "full")
    tensors = shard_tensors(tmp_path / "full")
    missing = tmp_path / "missing"
    missing.mkdir()
    key = next(k for k in tensors if k.startswith("model.sam_model.net_"))
    save_file({k: v for k, v in tensors.items() if k != key}, str(missing / "model.safetensors"))
    target = "encoder.compressor.down1.weight" if "net_2" in key else "encoder.compressor.down2.weight"
    with pytest.raises(WeightsError, match=f"missing, e.g. {target}"):
        load_pretrained_part(model, "deepencoder", missing)
    misshapen = tmp_path / "misshapen.safetensors"
    qkv = next(k for k in tensors if k.endswith("qkv_proj.weight") or k.endswith("qkv_proj.bias"))
    save_file({**tensors, qkv: torch.zeros(5, *tensors[qkv].shape[1:])}, str(misshapen))
    with pytest.raises(WeightsError, match="not three stacked projections"):
        load_pretrained_part(model, "deepencoder", misshapen)
    wrong = tmp_path / "wrong.safetensors"
    save_file({**tensors, "model.sam_model.pos_embed": torch.zeros(1, 2, 2, 3)}, str(wrong))
    with pytest.raises(WeightsError, match=r"encoder\.sam\.pos_embed has shape \(1, 2, 2, 3\)"):
        load_pretrained_part(model, "deepencoder", wrong)


def test_the_language_model_loads_from_shards_in_transformers_5s_qwen2_vl_layout(model, tmp_path):
    """Qwen2-VL as transformers 5 saves it: model.language_model.*, model.visual.* (skipped), lm_head,
    in two shards: the directory is what a recipe names."""
    from safetensors.torch import save_file

    lm = Qwen2ForCausalLM(model.config.qwen2())
    renamed = {k if k.startswith("lm_head.") else "model.language_model." + k[len("model."):]: v
               for k, v in lm.state_dict().items()}
    renamed["model.visual.blocks.0.attn.qkv.weight"] = torch.zeros(6, 2)
    keys = sorted(renamed)
    (tmp_path / "qwen2-vl").mkdir()
    save_file({k: renamed[k].contiguous() for k in keys[::2]}, str(tmp_path / "qwen2-vl" / "model-00001-of-00002.safetensors"))
    save_file({k: renamed[k].contiguous() for k in keys[1::2]}, str(tmp_path / "qwen2-vl" / "model-00002-of-00002.safetensors"))
    report = load_pretrained_part(model, "language", tmp_path / "qwen2-vl")
    assert report["skipped_keys"] == ["model.visual.blocks.0.attn.qkv.weight"]
    torch.testing.assert_close(model.language_model.model.layers[1].self_attn.k_proj.weight, lm.model.layers[1].self_attn.k_proj.weight)


def test_check_weights_reads_headers_against_a_meta_model_and_exits_1_on_a_wrong_file(model, tokenizer, tokenizer_dir,
                                                                                          tmp_path):
    from safetensors.torch import save_file

    from deepmolm.training.deepmolm.stages import check_weights
    from tests.conftest import run_cli

    _deepseek_checkpoint(model, tmp_path / "deepseek-ocr")
    params = load_params(PARAMS, ["model.preset=tiny", f"train.init.deepencoder={tmp_path / 'deepseek-ocr'}"])
    report = check_weights(params, tokenizer)
    encoder_keys = sum(1 for k in model.state_dict() if k.startswith("encoder."))
    assert report["problems"] == [] and report["parts"]["deepencoder"]["mapped"] == encoder_keys
    assert report["parts"]["deepencoder"]["skipped"] == len(NOT_ENCODER)

    tensors = shard_tensors(tmp_path / "deepseek-ocr")
    wrong = tmp_path / "wrong.safetensors"
    save_file({**tensors, "model.sam_model.pos_embed": torch.zeros(1, 2, 2, 3)}, str(wrong))
    checked = run_cli("model", "check-weights", "--tokenizer", str(tokenizer_dir), "-S", "model.preset=tiny",
                      "-S", f"train.init.deepencoder={wrong}")
    assert checked.returncode == 1 and "encoder.sam.pos_embed has shape (1, 2, 2, 3)" in checked.stdout, checked.stdout
