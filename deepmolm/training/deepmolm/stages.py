"""What each training stage starts from and what it trains.

Stage 1 (alignment) builds the model from the preset, loads the pretrained parts named in
`train.init` (random where null), and trains only what `train.stage1.trainable` lists (the Fusion
Projector). Stage 2 (instruction tuning) starts from stage 1's exported model and trains the parts in
`train.stage2.trainable`; with `lora.enabled`, the LLM's own weights stay frozen and peft's LoRA
adapters on `target_modules` train instead, merged back into the LLM when the model is exported.
"""

from __future__ import annotations

import hashlib
import json
import operator
from pathlib import Path

import torch

from deepmolm.config import ConfigError, LoraParams, Params, StageParams
from deepmolm.models.deepmolm.configuration import DeepMoLMConfig
from deepmolm.models.deepmolm.modeling import DeepMoLMForCausalLM, number_heads
from deepmolm.models.deepmolm.presets import model_config
from deepmolm.models.deepmolm.tokenizer import image_token_id, number_token_id
from deepmolm.models.deepmolm.weights import WeightsError, load_pretrained_part, plan_part, read_shapes, tied_keys
from deepmolm.training.checkpoints import PROVENANCE

INIT_PARTS = ("deepencoder", "encoder", "sam", "clip", "language")  # train.init's keys, in the order they load


def initial_model(params: Params, stage: int, tokenizer, init_dir: Path | None) -> DeepMoLMForCausalLM:
    """Stage 1: the preset, random, with `train.init`'s pretrained parts; stage 2: `init_dir`.
    In training mode: from_pretrained returns a model in eval mode, which would silently turn
    dropout (LoRA's included) off for the whole of stage 2."""
    return _initial_model(params, stage, tokenizer, init_dir).train()


def _initial_model(params: Params, stage: int, tokenizer, init_dir: Path | None) -> DeepMoLMForCausalLM:
    if stage == 2:
        if init_dir is None or not (Path(init_dir) / "config.json").is_file():
            raise FileNotFoundError(f"stage 2 starts from stage 1's exported model; none at {init_dir}")
        model = DeepMoLMForCausalLM.from_pretrained(init_dir, local_files_only=True)
        if model.config.qwen2().vocab_size < len(tokenizer):
            raise ConfigError(f"{init_dir} has {model.config.qwen2().vocab_size} token embeddings, "
                              f"the tokenizer {len(tokenizer)}")
        return model
    preset_vocab = params.model.presets[params.model.preset].language.vocab_size
    if params.train.init.language is not None and preset_vocab < len(tokenizer):
        raise ConfigError(f"model.presets.{params.model.preset}.language.vocab_size ({preset_vocab}) is smaller than "
                          f"the tokenizer ({len(tokenizer)}) and train.init.language fixes the embedding size")
    torch.manual_seed(params.train.seed)  # the same random start on every worker
    model = DeepMoLMForCausalLM(stage1_config(params, tokenizer))
    for part in INIT_PARTS:
        path = getattr(params.train.init, part)
        if path is not None:
            load_pretrained_part(model, part, path)
    return model


def stage1_config(params: Params, tokenizer) -> DeepMoLMConfig:
    """The preset's config; the embeddings as the pretrained LM has them, else one row per token."""
    init_vocab = params.model.presets[params.model.preset].language.vocab_size
    vocab = init_vocab if params.train.init.language is not None else len(tokenizer)
    return model_config(params, vocab_size=vocab, image_token_id=image_token_id(tokenizer),
                        number_token_id=number_token_id(tokenizer))


ENCODER_BLOCKS = ("encoder.sam", "encoder.compressor", "encoder.clip")


def check_weights(params: Params, tokenizer) -> dict:
    """What stage 1 would load from `train.init`, checked from the files' headers against the model
    built on the meta device (nothing allocated, nothing read): per part what maps, what is
    skipped, missing, unknown or misshapen; and the tokenizer against the embedding rows."""
    init, config = params.train.init, stage1_config(params, tokenizer)
    vocab = config.qwen2().vocab_size
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in DeepMoLMForCausalLM(config).state_dict().items()}
    parts, problems = {}, []
    for part in INIT_PARTS:
        path = getattr(init, part)
        if path is None:
            continue
        try:
            plan = plan_part(read_shapes(path), part, ours, tied_keys(config))
        except (WeightsError, FileNotFoundError) as exc:
            parts[part] = {"path": str(path), "error": str(exc)}
            problems.append(f"train.init.{part}: {exc}")
            continue
        parts[part] = {"path": str(path), "mapped": len(plan.placements), "skipped": len(plan.skipped),
                       "skipped_examples": plan.skipped[:5], "missing": plan.missing, "unknown": plan.unknown,
                       "mismatched": plan.mismatched}
        problems += [f"train.init.{part} ({path}): {problem}" for problem in plan.problems]
    if len(tokenizer) > vocab:
        problems.append(f"the tokenizer has {len(tokenizer)} tokens, the embeddings {vocab} rows")
    return {"recipe": params.recipe, "parts": parts, "tokenizer_tokens": len(tokenizer), "embedding_rows": vocab,
            "problems": problems}


def pretrained_blocks(params: Params) -> set[str]:
    """The modules `train.init` gives pretrained weights: the whole DeepEncoder from DeepSeek-OCR's
    checkpoint or from our own pretraining; SAM and CLIP from their own (the compressor between them then has none)."""
    init = params.train.init
    blocks = set(ENCODER_BLOCKS) if init.deepencoder is not None or init.encoder is not None else set()
    blocks |= {"encoder.sam"} if init.sam is not None else set()
    blocks |= {"encoder.clip"} if init.clip is not None else set()
    return blocks | ({"language_model"} if init.language is not None else set())


def random_parts(params: Params, stage: int) -> set[str]:
    """The blocks that start from random weights (no `train.init` file for them) and, with
    `train.train_random_parts`, train in every stage: `encoder` when nothing of it is pretrained,
    else its random blocks (`encoder.compressor` between a separate SAM and CLIP). The paper
    freezes a pretrained DeepEncoder in both stages and a pretrained LLM in stage 1; a random part
    that stays frozen only adds noise (a random encoder's tokens, a random LM that the projector is
    aligned into)."""
    if not params.train.train_random_parts:
        return set()
    loaded = pretrained_blocks(params)
    encoder = {block for block in ENCODER_BLOCKS if block not in loaded}
    parts = {"encoder"} if encoder == set(ENCODER_BLOCKS) else encoder
    return parts | ({"language_model"} if "language_model" not in loaded else set())


def set_trainable(model: torch.nn.Module, stage: StageParams, extra: set[str] = frozenset()) -> dict[str, int]:
    """Freeze everything, then unfreeze the stage's parts and `extra` (only LoRA adapters of the LLM
    when LoRA is on). A number head trains with the language model, whose hidden states it reads.
    Returns trainable and frozen parameter counts."""
    model.requires_grad_(False)
    lora = stage.lora is not None and stage.lora.enabled
    for part in [*stage.trainable, *sorted(extra - set(stage.trainable))]:
        if part == "language_model":
            for head in number_heads(model).values():
                head.requires_grad_(True)
        if part == "language_model" and lora:
            continue
        operator.attrgetter(part)(model).requires_grad_(True)
    if lora:
        if "language_model" not in stage.trainable:
            raise ConfigError("lora.enabled needs language_model in the stage's trainable parts")
        for name, parameter in model.language_model.named_parameters():
            parameter.requires_grad_("lora_" in name)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "frozen": sum(p.numel() for p in model.parameters()) - trainable,
            "blocks": block_states(model)}


def block_states(model: torch.nn.Module) -> dict[str, str]:
    """trainable | frozen | partly (LoRA adapters in a frozen LLM) for each block of the model."""
    names = [name for name, _ in model.named_children() if name != "encoder"]
    names += [f"encoder.{name}" for name, _ in model.encoder.named_children()] if hasattr(model, "encoder") else []
    states = {}
    for name in sorted(names):
        flags = {p.requires_grad for p in operator.attrgetter(name)(model).parameters()}
        if flags:
            states[name] = "partly" if len(flags) == 2 else ("trainable" if flags == {True} else "frozen")
    return states


def add_lora(model: DeepMoLMForCausalLM, lora: LoraParams) -> None:
    """Wrap the LLM in peft's LoRA (its weights frozen, adapters on `target_modules`)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    model.language_model = get_peft_model(model.language_model, config)


def merge_lora(model: DeepMoLMForCausalLM) -> DeepMoLMForCausalLM:
    """Fold the adapters into the LLM's weights, so the export is a plain DeepMoLM checkpoint."""
    if hasattr(model.language_model, "merge_and_unload"):
        model.language_model = model.language_model.merge_and_unload()
    return model


def lora_enabled(stage: StageParams) -> bool:
    return stage.lora is not None and stage.lora.enabled


# The code a run's weights depend on: the model, the training loop and the optimizer with its
# schedule (strategy.py, shared with MuMo). Its digest is in the run name, so a changed model resumes
# no finished run of the old one (a finished run only exports).
LEARNING_CODE = (Path(__file__).resolve().parents[2] / "models" / "deepmolm", Path(__file__).resolve().parent,
                 Path(__file__).resolve().parents[1] / "strategy.py")


# train.* keys left out of a run's name: where it is stored, the failure budget and how batches are
# loaded change nothing that is learned (the stages' own sections enter as `stage_params`).
NOT_LEARNED = ("runs_dir", "models_dir", "ray_address", "ray_dashboard", "max_failures", "loader_batches_ahead", "loader_workers",
               "cluster", "stage1", "stage2", "checkpoint_every_steps", "keep_checkpoints")


def run_name(stage: int, params: Params, instructions_id: str, tokenizer_dir: Path, init_dir: Path | None,
             code: tuple[Path, ...] = LEARNING_CODE) -> str:
    """Same inputs, same name: Ray Train finds the run's checkpoints under it and resumes.

    Not in the key: where the run is stored and the failure budget, which do not change what is
    learned. The worker count and batch sizes are: they change the effective batch. The source of
    `code` is: a run killed and started again with the same code resumes, a new model starts anew."""
    train = params.train.model_dump(mode="json", exclude=set(NOT_LEARNED))
    key = {
        "stage": stage,
        "stage_params": params.train.stage(stage).model_dump(mode="json"),
        "train": train,
        "model": params.model.model_dump(mode="json", exclude={"generation"}),
        "e3fp": params.featurize.e3fp.model_dump(mode="json"),
        "instructions": instructions_id,
        "tokenizer": _files_digest(Path(tokenizer_dir)),
        # stage 1 from our own pretrained encoder: which run made it (a new encoder, a new stage 1)
        "init": _init_identity(init_dir) if stage == 2 else _init_identity(params.train.init.encoder),
        "code": [_files_digest(directory, "*.py") for directory in code],
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return f"stage{stage}-{digest}"


def _init_identity(init_dir: Path | None) -> str | None:
    """Stage 1's run name when its export says it (cheap), else a digest of its files."""
    if init_dir is None:
        return None
    provenance = Path(init_dir) / PROVENANCE
    if provenance.is_file():
        return json.loads(provenance.read_text())["run"]
    return _files_digest(Path(init_dir))


def _files_digest(directory: Path, pattern: str = "*") -> str:
    """Of the files under `directory` matching `pattern`, or of `directory` itself when it is a file."""
    digest = hashlib.sha256()
    root, files = ((directory.parent, [directory]) if directory.is_file()
                   else (directory, sorted(p for p in directory.rglob(pattern) if p.is_file())))
    for path in files:
        digest.update(str(path.relative_to(root)).encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]
