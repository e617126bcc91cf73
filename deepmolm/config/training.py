"""Sections of training on Ray Train: scaling, DeepSpeed, LoRA, the two stages, hold-out, initial weights, cluster."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from deepmolm.config.base import ConfigError, ProjectPath, Split, StorageLocation, Task, _Section


class ScalingParams(_Section):
    workers: int = Field(ge=1, description="Ray Train workers (one process each; one GPU each with use_gpu)")
    use_gpu: bool
    cpus_per_worker: float = Field(gt=0)
    gpus_per_worker: float = Field(gt=0, description="used only with use_gpu")


class DeepSpeedParams(_Section):
    zero_stage: Literal[2, 3] = Field(description="ZeRO stage: 2 shards optimizer state and gradients, 3 also parameters")
    offload_optimizer: bool = Field(description="optimizer state in CPU memory (ZeRO-Offload)")


class LoraParams(_Section):
    enabled: bool = Field(description="stage 2 tunes LoRA adapters on the LLM instead of all its weights")
    r: int = Field(ge=1)
    alpha: int = Field(ge=1)
    dropout: float = Field(ge=0, lt=1)
    target_modules: list[str] = Field(min_length=1, description="names of the LLM's linear layers that get adapters")


class StageParams(_Section):
    tasks: list[Task] = Field(min_length=1, description="instruction tasks trained on")
    trainable: list[Literal["encoder", "projector", "language_model"]] = Field(
        min_length=1, description="parts that train; the rest are frozen")
    epochs: int = Field(ge=0, description="0 (stage 1 only): exported untrained, the 'without stage 1' ablation")
    max_steps: int | None = Field(ge=1, description="optimizer steps; null: epochs over the examples")
    learning_rate: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    warmup_ratio: float = Field(ge=0, lt=1, description="linear warmup over this fraction of the steps, then cosine")
    min_lr_ratio: float = Field(ge=0, le=1, description="the cosine ends at learning_rate * min_lr_ratio")
    withhold_e3fp: float = Field(ge=0, lt=1, description="share of training examples without their E3FP, drawn per "
                                                         "epoch (modality dropout): they are answered from the drawing")
    lora: LoraParams | None = Field(default=None, description="stage 2 only")


class NumberHeadRefitParams(_Section):
    steps: int = Field(ge=0, description="optimizer steps of the head alone after a stage with <num> slots; 0: none")
    batch_size: int = Field(ge=1, description="slots per step")
    learning_rate: float = Field(gt=0, description="AdamW's peak rate; a cosine to 0 over the steps")
    weight_decay: float = Field(ge=0)
    seed: int = Field(ge=0, description="the draw of each step's slots")
    per_view: bool = Field(description="split the head in two: a copy of it fitted on every training example "
                                       "from the drawing alone answers the molecules without E3FP")


class HoldoutParams(_Section):
    fraction: float = Field(ge=0, lt=0.5, description="share of train.splits molecules held out of training")
    seed: int = Field(ge=0, description="which molecules: a hash of (seed, cid)")


class InitWeightsParams(_Section):
    deepencoder: ProjectPath | None = Field(description="DeepSeek-OCR's checkpoint (a file or a sharded directory): "
                                                        "SAM, the compressor and CLIP trained together; null: none")
    encoder: ProjectPath | None = Field(description="a DeepEncoder pretrained on drawings by `deepmolm train encoder` "
                                                    "(the pretrain_encoder stage's models/encoder); null: none")
    sam: ProjectPath | None = Field(description="local safetensors of a SAM model (vision_encoder.*); null: random")
    clip: ProjectPath | None = Field(description="local safetensors of a CLIP vision model; null: random")
    language: ProjectPath | None = Field(description="local safetensors of a Qwen2 / Qwen2-VL LM; null: random")

    @model_validator(mode="after")
    def _one_source_per_part(self) -> InitWeightsParams:
        given = [name for name in ("deepencoder", "encoder", "sam", "clip") if getattr(self, name) is not None]
        if len(given) > 1 and not set(given) <= {"sam", "clip"}:
            raise ValueError(f"train.init.{given[0]} holds the whole DeepEncoder: leave "
                             + " and ".join(f"train.init.{name}" for name in given[1:]) + " null")
        return self


class ClusterParams(_Section):
    address: str | None = Field(description="a Ray cluster's Jobs API (http://HEAD:8265): the `train` deployment submits there")
    install_packages: bool = Field(description="the job's runtime_env installs requirements/lock.txt with pip")
    excludes: list[str] = Field(description="left out of the uploaded working_dir (gitignore-style patterns)")
    env_vars: dict[str, str] = Field(description="set in the job's environment")


class EncoderPretrainParams(_Section):
    """The pretrain_encoder stage (training/encoder/): the DeepEncoder learns to read drawings first."""
    molecules_file: ProjectPath | None = Field(description="unlabelled SMILES (a `SMILES` header, gzip or plain); null: none")
    file_molecules: int = Field(ge=0, description="its first rows read (those sharing an InChIKey skeleton with an "
                                                  "evaluated split's molecule are left out)")
    train_split_molecules: bool = Field(description="the train.splits molecules too (never train.holdout's)")
    holdout_molecules: int = Field(ge=1, description="of the corpus, seeded: the held-out metrics")
    render_factor: int = Field(ge=1, le=8, description="drawn at this many times the model's image size, then shrunk")
    rotation_deg: float = Field(ge=0, le=180)
    bond_line_width: list[float] = Field(min_length=2, max_length=2, description="range, at 1,024 px")
    font_scale: list[float] = Field(min_length=2, max_length=2, description="range of RDKit's baseFontSize")
    epochs: int = Field(ge=0, description="0: no pretraining (the stage exports the random encoder)")
    batch_size: int = Field(ge=1, description="drawings per step, over all workers")
    learning_rate: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    warmup_ratio: float = Field(ge=0, lt=1)
    min_lr_ratio: float = Field(ge=0, le=1)


class TrainParams(_Section):
    splits: list[Split] | None = Field(min_length=1, description="instruction rows of these splits are trained on; null: all rows")
    seed: int = Field(ge=0)
    runs_dir: StorageLocation = Field(description="Ray Train storage (checkpoints, step metrics): a path, or a URI such as s3://...")
    models_dir: ProjectPath = Field(description="exported weights: <models_dir>/stage1, <models_dir>/stage2")
    ray_address: str | None = Field(description="null: a local Ray (or the cluster a Jobs API job runs on)")
    ray_dashboard: bool = Field(description="a local Ray starts its dashboard (a cluster keeps its own)")
    scaling: ScalingParams
    strategy: Literal["ddp", "deepspeed"]
    precision: Literal["auto", "fp32", "bf16"] = Field(description="auto: bf16 on GPUs, fp32 on CPUs")
    deepspeed: DeepSpeedParams
    micro_batch_size: int = Field(ge=1, description="examples per worker per forward pass")
    grad_accum_steps: int = Field(ge=1)
    max_grad_norm: float = Field(gt=0, description="gradient clipping (global L2 norm)")
    adam_betas: list[float] = Field(min_length=2, max_length=2)
    adam_eps: float = Field(gt=0)
    number_head_refit: NumberHeadRefitParams = Field(
        description="model.number_head fitted again alone on the trained model's frozen inputs (training/deepmolm/number_head.py)")
    checkpoint_every_steps: int = Field(ge=1)
    keep_checkpoints: int = Field(ge=1)
    max_failures: int = Field(ge=-1, description="worker failures a run survives (-1: no limit)")
    length_group_steps: int = Field(
        ge=0, description="steps of the epoch's shuffle whose examples are sorted by length into batches (0: none)")
    loader_workers: int = Field(ge=0, description="data-loading processes per training worker (0: in the worker)")
    loader_batches_ahead: int = Field(ge=1, description="batches each loading process prepares ahead")
    holdout: HoldoutParams = Field(description="molecules of train.splits kept out of training: held-out loss, tuning")
    train_random_parts: bool = Field(
        description="parts that start random (no train.init weights) train in every stage, whatever `trainable` says")
    init: InitWeightsParams
    encoder_pretrain: EncoderPretrainParams
    cluster: ClusterParams = Field(description="`deepmolm train submit`: how the job is sent to a Ray cluster")
    stage1: StageParams
    stage2: StageParams

    @field_validator("stage1")
    @classmethod
    def _no_lora_in_stage1(cls, stage: StageParams) -> StageParams:
        if stage.lora is not None and stage.lora.enabled:
            raise ValueError("LoRA is for stage 2 (stage 1 trains the projector only)")
        if stage.epochs == 0 and stage.max_steps is not None:
            raise ValueError(f"epochs 0 skips stage 1, max_steps {stage.max_steps} would train it: set one")
        return stage

    @field_validator("stage2")
    @classmethod
    def _stage2_trains(cls, stage: StageParams) -> StageParams:
        if stage.epochs == 0 and stage.max_steps is None:
            raise ValueError("epochs 0: stage 2 would train nothing (only stage 1 can be skipped)")
        return stage

    def stage(self, number: int) -> StageParams:
        if number not in (1, 2):
            raise ConfigError(f"there are stages 1 and 2, not {number}")
        return self.stage1 if number == 1 else self.stage2
