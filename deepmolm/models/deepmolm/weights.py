"""Pretrained weights from local files: SAM-base and CLIP-large for the DeepEncoder, a Qwen2 LM.

Only safetensors are read (a pickle can run code; `.bin`, `.pt` and `.pth` files are refused), only
from local paths. The key mapping, from the layout transformers saves these models in:

| part     | source checkpoint (transformers layout)      | source keys                                   | our keys                          |
| -------- | -------------------------------------------- | --------------------------------------------- | --------------------------------- |
| sam      | SamModel (e.g. facebook/sam-vit-base)        | vision_encoder.*                              | encoder.sam.*                     |
| clip     | CLIPModel or CLIPVisionModel (clip-vit-large-patch14) | vision_model.pre_layrnorm.*, vision_model.encoder.*, vision_model.embeddings.class_embedding, vision_model.embeddings.position_embedding.* | encoder.clip.pre_layrnorm.*, encoder.clip.encoder.*, encoder.clip.class_embedding, encoder.clip.position_embedding.* |
| language | Qwen2ForCausalLM, or Qwen2-VL's language model | model.language_model.* or model.*, lm_head.* | language_model.model.*, language_model.lm_head.* |

Everything else in a source (SAM's prompt encoder and mask decoder, CLIP's text tower and patch
convolution, which the compressor replaces, Qwen2-VL's vision tower) is skipped and reported. CLIP-L
at 224 px has 257 positions: exactly the 256 compressed tokens plus the class token.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

RULES: dict[str, list[tuple[str, str]]] = {
    "sam": [("vision_encoder.", "encoder.sam.")],
    "clip": [
        ("vision_model.pre_layrnorm.", "encoder.clip.pre_layrnorm."),
        ("vision_model.encoder.", "encoder.clip.encoder."),
        ("vision_model.embeddings.class_embedding", "encoder.clip.class_embedding"),
        ("vision_model.embeddings.position_embedding.", "encoder.clip.position_embedding."),
    ],
    "language": [
        ("model.language_model.", "language_model.model."),
        ("model.", "language_model.model."),
        ("lm_head.", "language_model.lm_head."),
    ],
}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class WeightsError(ValueError):
    pass


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A .safetensors file, or every .safetensors file of a directory (sharded checkpoints)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if not files:
            pickled = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
            hint = f" (found {', '.join(pickled)}: pickled weights are not loaded)" if pickled else ""
            raise WeightsError(f"no .safetensors file in {path}{hint}")
    elif path.suffix in PICKLE_SUFFIXES:
        raise WeightsError(f"{path}: pickled weights are not loaded; convert them to safetensors first")
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"no weights at {path}")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                tensors[key] = handle.get_tensor(key)
    return tensors


def map_keys(tensors: dict[str, torch.Tensor], part: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(our key -> tensor, source keys skipped); the first matching rule wins."""
    mapped, skipped = {}, []
    for key, tensor in tensors.items():
        for source, target in RULES[part]:
            if key.startswith(source):
                mapped[target + key[len(source):]] = tensor
                break
        else:
            skipped.append(key)
    return mapped, skipped


def load_pretrained_part(model: torch.nn.Module, part: str, path: Path) -> dict:
    """Copy one part's weights into `model` (a DeepMoLMForCausalLM). Every parameter of the part
    must be found with its shape; a shape or a missing key is an error naming it."""
    if part not in RULES:
        raise WeightsError(f"unknown part {part!r}: expected one of {', '.join(RULES)}")
    mapped, skipped = map_keys(read_safetensors(path), part)
    ours = model.state_dict()
    prefix = {"sam": "encoder.sam.", "clip": "encoder.clip.", "language": "language_model."}[part]
    expected = {k for k in ours if k.startswith(prefix)}
    unknown = sorted(set(mapped) - set(ours))
    if unknown:
        raise WeightsError(f"{path}: {len(unknown)} {part} weights have no place in the model, e.g. {unknown[0]}")
    for key, tensor in mapped.items():
        if ours[key].shape != tensor.shape:
            raise WeightsError(f"{path}: {key} has shape {tuple(tensor.shape)}, the model expects {tuple(ours[key].shape)}")
    tied = {"language_model.lm_head.weight"} if getattr(model.config.qwen2(), "tie_word_embeddings", False) else set()
    missing = sorted(expected - set(mapped) - tied)
    if missing:
        raise WeightsError(f"{path}: {len(missing)} {part} weights missing, e.g. {missing[0]}")
    with torch.no_grad():
        for key, tensor in mapped.items():
            ours[key].copy_(tensor.to(ours[key].dtype))
    return {"part": part, "path": str(path), "loaded": len(mapped), "skipped": len(skipped)}
