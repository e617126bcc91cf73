"""Pretrained weights from local files: the DeepEncoder (DeepSeek-OCR's, or SAM-base and CLIP-large
apart), a Qwen2 LM.

Only safetensors are read (a pickle can run code; `.bin`, `.pt` and `.pth` files are refused), only
from local paths, a file or a sharded directory; only the tensors a part maps are read into memory.

`deepencoder` is DeepSeek-OCR's released checkpoint (and DeepMoLM's `sam_clip_ckpt`, the same
layout), where SAM-B, the two compressor convolutions and CLIP-L were trained together:

| source keys (DeepSeek-OCR)                                   | our keys                                               |
| ------------------------------------------------------------ | ------------------------------------------------------ |
| model.sam_model.patch_embed.proj.*, pos_embed                 | encoder.sam.patch_embed.projection.*, pos_embed        |
| model.sam_model.blocks.N.norm1 / norm2 / attn.* / mlp.*       | encoder.sam.layers.N.layer_norm1 / layer_norm2 / attn.* / mlp.* |
| model.sam_model.neck.0 / 1 / 2 / 3                            | encoder.sam.neck.conv1 / layer_norm1 / conv2 / layer_norm2 |
| model.sam_model.net_2 / net_3                                 | encoder.compressor.down1 / down2                       |
| model.vision_model.embeddings.class_embedding, position_embedding.* | encoder.clip.class_embedding, position_embedding.* |
| model.vision_model.pre_layrnorm.*                             | encoder.clip.pre_layrnorm.*                            |
| model.vision_model.transformer.layers.N.self_attn.qkv_proj.*  | encoder.clip.encoder.layers.N.self_attn.q_proj / k_proj / v_proj.* (split in that order) |
| model.vision_model.transformer.layers.N.{self_attn.out_proj, layer_norm1, layer_norm2, mlp.fc1, mlp.fc2}.* | encoder.clip.encoder.layers.N.(same).* |

Skipped and reported: the language model, the projector to its width, `image_newline`,
`view_seperator`, CLIP's patch convolution (the compressor replaces it) and its `position_ids`.

The separate parts, from the layout transformers saves these models in:

| part     | source checkpoint (transformers layout)      | source keys                                   | our keys                          |
| -------- | -------------------------------------------- | --------------------------------------------- | --------------------------------- |
| sam      | SamModel (e.g. facebook/sam-vit-base)        | vision_encoder.*                              | encoder.sam.*                     |
| clip     | CLIPModel or CLIPVisionModel (clip-vit-large-patch14) | vision_model.pre_layrnorm.*, vision_model.encoder.*, vision_model.embeddings.class_embedding, vision_model.embeddings.position_embedding.* | encoder.clip.pre_layrnorm.*, encoder.clip.encoder.*, encoder.clip.class_embedding, encoder.clip.position_embedding.* |
| language | Qwen2ForCausalLM, or Qwen2-VL's language model | model.language_model.* or model.*, lm_head.* | language_model.model.*, language_model.lm_head.* |

`encoder` is a DeepEncoder this project pretrained itself (`deepmolm train encoder`, the
`pretrain_encoder` stage): the model's own `encoder.*` keys, pixels normalised as the preset says.

Everything else in a source (SAM's prompt encoder and mask decoder, CLIP's text tower and patch
convolution, which the compressor replaces, Qwen2-VL's vision tower) is skipped and reported. CLIP-L
at 224 px has 257 positions: exactly the 256 compressed tokens plus the class token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from deepmolm.config import ConfigError

RULES: dict[str, list[tuple[str, str]]] = {
    "sam": [("vision_encoder.", "encoder.sam.")],
    "clip": [
        ("vision_model.pre_layrnorm.", "encoder.clip.pre_layrnorm."),
        ("vision_model.encoder.", "encoder.clip.encoder."),
        ("vision_model.embeddings.class_embedding", "encoder.clip.class_embedding"),
        ("vision_model.embeddings.position_embedding.", "encoder.clip.position_embedding."),
    ],
    "encoder": [("encoder.", "encoder.")],  # `deepmolm train encoder`'s export: the model's own keys
    "language": [
        ("model.language_model.", "language_model.model."),
        ("model.", "language_model.model."),
        ("lm_head.", "language_model.lm_head."),
    ],
}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# DeepSeek-OCR normalises pixels to [-1, 1]; recorded in the model's config with its weights, so
# training, evaluation, `deepmolm predict` and `deepmolm serve` all feed them what they were trained on
DEEPSEEK_PIXELS = {"pixel_mean": [0.5, 0.5, 0.5], "pixel_std": [0.5, 0.5, 0.5]}
LANGUAGE_SKIPPED = ("model.visual.", "visual.")  # Qwen2-VL's vision tower, in transformers 5's layout and the Hub's
PART_PREFIXES = {"sam": ("encoder.sam.",), "clip": ("encoder.clip.",), "language": ("language_model.",),
                 "deepencoder": ("encoder.sam.", "encoder.compressor.", "encoder.clip."),
                 "encoder": ("encoder.sam.", "encoder.compressor.", "encoder.clip.")}
# DeepSeek-OCR's names, in order; the first that matches renames the key (None: read, then split)
DEEPENCODER_RULES: list[tuple[re.Pattern, str | None]] = [(re.compile(pattern), target) for pattern, target in [
    (r"^model\.sam_model\.patch_embed\.proj\.(.+)$", r"encoder.sam.patch_embed.projection.\1"),
    (r"^model\.sam_model\.pos_embed$", r"encoder.sam.pos_embed"),
    (r"^model\.sam_model\.blocks\.(\d+)\.norm([12])\.(.+)$", r"encoder.sam.layers.\1.layer_norm\2.\3"),
    (r"^model\.sam_model\.blocks\.(\d+)\.(attn|mlp)\.(.+)$", r"encoder.sam.layers.\1.\2.\3"),
    (r"^model\.sam_model\.neck\.0\.(.+)$", r"encoder.sam.neck.conv1.\1"),
    (r"^model\.sam_model\.neck\.1\.(.+)$", r"encoder.sam.neck.layer_norm1.\1"),
    (r"^model\.sam_model\.neck\.2\.(.+)$", r"encoder.sam.neck.conv2.\1"),
    (r"^model\.sam_model\.neck\.3\.(.+)$", r"encoder.sam.neck.layer_norm2.\1"),
    (r"^model\.sam_model\.net_2\.(.+)$", r"encoder.compressor.down1.\1"),
    (r"^model\.sam_model\.net_3\.(.+)$", r"encoder.compressor.down2.\1"),
    (r"^model\.vision_model\.embeddings\.class_embedding$", r"encoder.clip.class_embedding"),
    (r"^model\.vision_model\.embeddings\.position_embedding\.(.+)$", r"encoder.clip.position_embedding.\1"),
    (r"^model\.vision_model\.pre_layrnorm\.(.+)$", r"encoder.clip.pre_layrnorm.\1"),
    (r"^model\.vision_model\.transformer\.layers\.(\d+)\.self_attn\.qkv_proj\.(weight|bias)$", None),
    (r"^model\.vision_model\.transformer\.layers\.(\d+)\.(self_attn\.out_proj|layer_norm[12]|mlp\.fc[12])\.(.+)$",
     r"encoder.clip.encoder.layers.\1.\2.\3"),
]]


class WeightsError(ConfigError):
    """A weight file that does not fit the model: the message names the key and the shapes."""


def safetensors_files(path: Path) -> list[Path]:
    """A .safetensors file, or every .safetensors file of a directory (a sharded checkpoint)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if not files:
            pickled = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
            hint = f" (found {', '.join(pickled)}: pickled weights are not loaded)" if pickled else ""
            raise WeightsError(f"no .safetensors file in {path}{hint}")
        return files
    if path.suffix in PICKLE_SUFFIXES:
        raise WeightsError(f"{path}: pickled weights are not loaded; convert them to safetensors first")
    if path.is_file():
        return [path]
    raise FileNotFoundError(f"no weights at {path}")


def read_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Every key's shape, from the files' headers: nothing is read into memory."""
    shapes = {}
    for file in safetensors_files(path):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                shapes[key] = tuple(handle.get_slice(key).get_shape())
    return shapes


@dataclass(frozen=True)
class Placement:
    """Where one source tensor (or one third of it: q, k or v of a fused projection) goes."""
    source: str
    target: str
    shape: tuple[int, ...]  # of what lands at target
    piece: int | None = None


@dataclass
class PartPlan:
    part: str
    placements: list[Placement]
    skipped: list[str]  # source keys that are not the part's
    missing: list[str]  # our keys nothing fills
    unknown: list[str]  # targets the model does not have
    mismatched: list[str]  # "key: (source shape) where the model has (ours)"

    @property
    def problems(self) -> list[str]:
        return [*self.mismatched,
                *([f"{len(self.missing)} {self.part} weights missing, e.g. {self.missing[0]}"] if self.missing else []),
                *([f"{len(self.unknown)} {self.part} weights have no place in the model, e.g. {self.unknown[0]}"]
                  if self.unknown else [])]


def _prefix_target(key: str, part: str) -> str | None:
    if part == "language" and key.startswith(LANGUAGE_SKIPPED):
        return None
    for source, target in RULES[part]:
        if key.startswith(source):
            return target + key[len(source):]
    return None


def _placements(key: str, shape: tuple[int, ...], part: str) -> list[Placement] | None:
    """Where `key` goes (None: not this part's). DeepSeek-OCR's fused CLIP attention ([3 x D, ...],
    rows q, then k, then v, as its forward views them) goes to three places."""
    if part != "deepencoder":
        target = _prefix_target(key, part)
        return None if target is None else [Placement(key, target, shape)]
    for pattern, target in DEEPENCODER_RULES:
        if match := pattern.match(key):
            if target is not None:
                return [Placement(key, match.expand(target), shape)]
            layer, kind = match.group(1), match.group(2)
            if shape[0] % 3:  # reported by plan_part
                return [Placement(key, f"encoder.clip.encoder.layers.{layer}.self_attn.q_proj.{kind}", shape, -1)]
            third = (shape[0] // 3, *shape[1:])
            return [Placement(key, f"encoder.clip.encoder.layers.{layer}.self_attn.{name}.{kind}", third, piece)
                    for piece, name in enumerate(("q_proj", "k_proj", "v_proj"))]
    return None


def plan_part(shapes: dict[str, tuple[int, ...]], part: str, ours: dict[str, tuple[int, ...]],
              tied: set[str] = frozenset()) -> PartPlan:
    """What loading `part` from a checkpoint of these shapes into a model of `ours` would do."""
    if part not in PART_PREFIXES:
        raise WeightsError(f"unknown part {part!r}: expected one of {', '.join(PART_PREFIXES)}")
    placements, skipped = [], []
    for key, shape in shapes.items():
        found = _placements(key, shape, part)
        if found is None:
            skipped.append(key)
        else:
            placements += found
    targets = {p.target for p in placements}
    expected = {k for k in ours if k.startswith(PART_PREFIXES[part])}
    mismatched = [f"{p.source} has shape {p.shape}: not three stacked projections (q, k, v)" if p.piece == -1 else
                  f"{p.target} has shape {p.shape}, the model expects {tuple(ours[p.target])}"
                  for p in placements if p.target in ours and (p.piece == -1 or tuple(ours[p.target]) != p.shape)]
    return PartPlan(part, placements, sorted(skipped), missing=sorted(expected - targets - set(tied)),
                    unknown=sorted(targets - set(ours)), mismatched=mismatched)


def tied_keys(model_config) -> set[str]:
    return {"language_model.lm_head.weight"} if getattr(model_config.qwen2(), "tie_word_embeddings", False) else set()


def load_pretrained_part(model: torch.nn.Module, part: str, path: Path) -> dict:
    """Copy one part's weights into `model` (a DeepMoLMForCausalLM). Every parameter of the part
    must be found with its shape; a shape, a missing key or an unknown one is an error naming it.
    The plan is made from the files' headers; only the tensors placed are read."""
    ours = model.state_dict()
    plan = plan_part(read_shapes(path), part, {k: tuple(v.shape) for k, v in ours.items()}, tied_keys(model.config))
    if plan.problems:
        raise WeightsError(f"{path}: {plan.problems[0]}")
    by_source: dict[str, list[Placement]] = {}
    for placement in plan.placements:
        by_source.setdefault(placement.source, []).append(placement)
    with torch.no_grad():
        for file in safetensors_files(path):
            with safe_open(str(file), framework="pt") as handle:
                for key in set(handle.keys()) & set(by_source):
                    tensor = handle.get_tensor(key)
                    for placement in by_source[key]:
                        piece = tensor if placement.piece is None else tensor.chunk(3, dim=0)[placement.piece]
                        ours[placement.target].copy_(piece.to(ours[placement.target].dtype))
    if part == "deepencoder":
        model.config.encoder = {**model.config.encoder, **DEEPSEEK_PIXELS}
    return {"part": part, "path": str(path), "loaded": len(plan.placements), "skipped": len(plan.skipped),
            "skipped_keys": plan.skipped}
