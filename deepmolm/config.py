"""params.yaml -> typed, frozen config.

params.yaml is the one home of every knob. Unknown keys and invalid values are errors that name the
key, the file (or the ``-S`` override) and what was expected, so a typo never silently falls back to a
default. Relative paths are resolved against the directory of the params file, so a command behaves
the same from any working directory; dumped as JSON (manifests, hashes, run names) they are relative
to the project root again, so two clones dump the same params (deepmolm/run_log.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from deepmolm.run_log import portable_path

DEFAULT_PARAMS = Path("params.yaml")
Split = Literal["train", "validation", "test"]
Task = Literal["caption", "property_qa"]  # what an instruction asks: a description, or one computed property
TASKS: tuple[str, ...] = get_args(Task)


class ConfigError(ValueError):
    """A params file or override that cannot be used; the message names the key."""


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    if base is not None and not value.is_absolute():
        return Path(os.path.normpath(Path(base) / value))  # lexical: a symlinked ../shared stays ../shared
    return value


ProjectPath = Annotated[Path, AfterValidator(_resolve_path), PlainSerializer(portable_path, when_used="json")]


def _resolve_storage(value: str, info: ValidationInfo) -> str:
    """A URI (s3://, gs://, ...) as it is; a path resolved like ProjectPath."""
    return value if "://" in value else str(_resolve_path(Path(value), info))


StorageLocation = Annotated[str, AfterValidator(_resolve_storage), PlainSerializer(portable_path, when_used="json")]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PathsParams(_Section):
    raw_dir: ProjectPath = Field(description="root of raw tables: <raw_dir>/<source>/<snapshot>/")
    cache_dir: ProjectPath = Field(description="downloads and other re-creatable files")
    shards_dir: ProjectPath = Field(description="root of shard versions: <shards_dir>/<dataset>/<version>/")
    reports_dir: ProjectPath = Field(description="HTML and JSON reports; the data-quality ones in <reports_dir>/data/")
    instructions_dir: ProjectPath = Field(description="instruction sets: <instructions_dir>/<dataset>/<id>/")
    logs_dir: ProjectPath = Field(description="the run log (runs.jsonl): when, where and how long each run took; "
                                              "never a DVC output")


class Chebi20Params(_Section):
    mirror: ProjectPath | None = Field(
        description="directory holding <split>.txt in the published layout; null downloads from url"
    )
    url: str = Field(description="download URL template with a {split} placeholder")
    splits: list[Split] = Field(min_length=1, description="splits ingested when --split is not given")
    max_rows_per_split: int | None = Field(
        ge=1, description="read only the first rows of each split (a quick run); null reads them all"
    )
    sha256: dict[Split, str | None] = Field(
        description="known SHA-256 of each published split file; null means unknown"
    )
    trust_on_first_use: bool = Field(
        description="download a split whose sum is unknown and pin the sum seen first in the cache"
    )
    timeout_s: float = Field(gt=0)
    max_attempts: int = Field(ge=1, le=20)
    backoff_initial_s: float = Field(ge=0)
    backoff_max_s: float = Field(gt=0)

    @field_validator("url")
    @classmethod
    def _url_has_split(cls, url: str) -> str:
        if "{split}" not in url:
            raise ValueError("must contain the placeholder {split}")
        return url

    @field_validator("sha256")
    @classmethod
    def _sums_are_hex(cls, sums: dict) -> dict:
        for split, digest in sums.items():
            if digest is not None and not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ValueError(f"sha256.{split} must be 64 lowercase hex digits or null")
        return sums


class PubChemParams(_Section):
    base_url: str = Field(description="PUG-REST root, ending before /pug")
    batch_size: int = Field(ge=1, le=100, description="CIDs per request (PubChem allows 100)")
    requests_per_second: float = Field(gt=0, le=5, description="global limit over all threads")
    concurrency: int = Field(ge=1, le=16, description="batches in flight at once")
    timeout_s: float = Field(gt=0, description="connect and read timeout of one request")
    max_attempts: int = Field(ge=1, le=20, description="tries per request, the first included")
    backoff_initial_s: float = Field(ge=0)
    backoff_max_s: float = Field(gt=0)
    retry_after_max_s: float = Field(gt=0, description="longest Retry-After honoured")
    fetch_descriptions: bool
    fetch_conformers: bool
    description_source: str | None = Field(
        description="preferred DescriptionSourceName (e.g. ChEBI); null takes the first description"
    )
    on_batch_failure: Literal["fail", "reject"] = Field(
        description="fail: write nothing and exit non-zero; reject: the batch's CIDs become rejects"
    )


class SourcesParams(_Section):
    chebi20: Chebi20Params
    pubchem: PubChemParams


class IngestParams(_Section):
    rows_per_part: int = Field(ge=1, description="rows per Parquet part of a raw table")
    max_smiles_chars: int = Field(ge=1)
    max_description_chars: int = Field(ge=1)
    reject_text_chars: int = Field(ge=16, description="raw text kept per reject row, the rest cut")


class RenderParams(_Section):
    size: int = Field(ge=64, le=4096, description="width and height of the PNG in pixels")
    bond_line_width: float = Field(gt=0)
    padding: float = Field(ge=0, lt=0.5, description="fraction of the canvas left blank at each side")


class ConformerParams(_Section):
    method: Literal["etkdg", "none"] = Field(description="etkdg: ETKDGv3 embedding; none: no 3D")
    mmff: bool = Field(description="optimise the embedded conformer with MMFF94")
    seed: int = Field(ge=0)
    max_iterations: int = Field(ge=1, description="embedding tries per attempt (RDKit's maxIterations): a count, "
                                                  "not a time, so a slower machine embeds the same molecules")
    mmff_max_iters: int = Field(ge=1)
    random_coords_fallback: bool = Field(description="retry from the other starting point when ETKDG fails")
    random_coords_above_heavy_atoms: int = Field(
        ge=0, description="larger molecules start from random coordinates, smaller from the distance matrix"
    )
    max_heavy_atoms: int = Field(ge=1, description="larger molecules get conformer_source=none")


class E3fpParams(_Section):
    bits: int = Field(ge=2, le=2**31, description="identifiers are folded to [0, bits)")
    level: int = Field(ge=0, le=5, description="last shell level; the array has level+1 columns")
    radius_multiplier: float = Field(gt=0)
    stereo: bool


class DaskParams(_Section):
    workers: int = Field(ge=1, description="worker processes of the local cluster")
    threads_per_worker: int = Field(ge=1, description="1: RDKit work is CPU-bound and holds the GIL")
    memory_limit: str = Field(description="per worker, as Dask reads it (e.g. 4GiB, or auto)")
    scheduler_address: str | None = Field(
        description="an existing Dask scheduler (tcp://host:8786) instead of a local cluster; "
        "the DEEPMOLM_DASK_SCHEDULER environment variable overrides it"
    )


class FeaturizeParams(_Section):
    rows_per_part: int = Field(ge=1, description="molecules per Dask task and per Parquet part")
    time_limit_s: float = Field(
        gt=0, description="hard wall-clock limit per molecule; past it the molecule gets no conformer"
    )
    task_retries: int = Field(ge=0, description="Prefect retries of a part whose task failed")
    task_retry_delay_s: float = Field(ge=0)
    dask: DaskParams
    render: RenderParams
    conformer: ConformerParams
    e3fp: E3fpParams


RATE_KEY_ANY, RATE_KEY_ALL = "*", "*all*"


class ContractsParams(_Section):
    suites_dir: ProjectPath = Field(description="the expectation suites, one <table>.json each")
    selfies_sample: int = Field(ge=0, description="molecules whose SELFIES is decoded back and compared")
    sample_seed: int = Field(ge=0)
    caption_splits: list[Split] = Field(description="splits whose rows must carry a description")
    max_reject_rate: dict[str, float] = Field(
        description="highest reject rate (fraction of input rows) per reason; '*' any other reason, '*all*' all together"
    )

    @field_validator("max_reject_rate")
    @classmethod
    def _known_reasons(cls, rates: dict[str, float]) -> dict[str, float]:
        from deepmolm.featurize.outcome import REJECT_REASONS

        for key, rate in rates.items():
            if key not in (*REJECT_REASONS, RATE_KEY_ANY, RATE_KEY_ALL):
                raise ValueError(f"unknown reject reason {key!r} (known: {', '.join(REJECT_REASONS)}, '*', '*all*')")
            if not 0 <= rate <= 1:
                raise ValueError(f"max_reject_rate.{key} must be a fraction in [0, 1], got {rate}")
        return rates

    @property
    def known_reject_reasons(self) -> tuple[str, ...]:
        from deepmolm.featurize.outcome import REJECT_REASONS

        return REJECT_REASONS


class ReportParams(_Section):
    gallery_size: int = Field(ge=0, description="molecules shown in the report's gallery")
    gallery_seed: int = Field(ge=0)
    thumbnail_px: int = Field(ge=64, le=1024, description="gallery images are scaled down to this width")


PropertyName = Literal["mw", "logp", "tpsa", "complexity", "homo", "lumo", "gap", "scf_energy"]


class BaselineParams(_Section):
    fingerprint: Literal["morgan", "e3fp"] = Field(description="similarity for the retrieval baseline")
    morgan_radius: int = Field(ge=0, le=6)
    morgan_bits: int = Field(ge=64, le=1 << 16)


class EvalParams(_Section):
    tokenizer: ProjectPath = Field(description="local Hugging Face tokenizer directory for the caption metrics")
    max_tokens: int = Field(ge=1, description="tokens per caption kept for the metrics (MolT5: 512)")
    nltk_data: ProjectPath = Field(description="where the offline WordNet corpus for METEOR is prepared")
    property_ranges: dict[PropertyName, tuple[float, float]] = Field(
        description="plausible [low, high] per property; an answer outside is not valid"
    )
    baseline: BaselineParams
    splits: list[Split] = Field(min_length=1, description="held-out splits the model and the baseline answer")
    on_holdout: bool = Field(description="answer train.holdout's molecules instead of eval.splits (for tuning a "
                                          "recipe without looking at the test split)")
    max_examples_per_task: int | None = Field(ge=1, description="cap per task (a quick look); null: every example")
    batch_size: int = Field(ge=1, description="prompts generated together")
    property_max_new_tokens: int = Field(ge=1, description="answer length budget of a property question")

    @field_validator("property_ranges")
    @classmethod
    def _ordered(cls, ranges: dict) -> dict:
        for name, (low, high) in ranges.items():
            if not low < high:
                raise ValueError(f"property_ranges.{name}: low {low} must be below high {high}")
        return ranges


class ServeParams(_Section):
    host: str = Field(min_length=1, description="interface `deepmolm serve` binds to; one other than loopback needs --public")
    port: int = Field(ge=0, le=65535, description="0: any free port")
    concurrency: int = Field(ge=1, description="answers computed at once; other requests wait their turn")
    max_waiting: int = Field(ge=0, description="requests waiting for a turn beyond which the server answers 503")
    wait_timeout_s: float = Field(gt=0, description="a request that waited this long for a turn gets 503")
    max_smiles_chars: int = Field(ge=1, description="a longer SMILES is refused (413)")
    max_prompt_chars: int = Field(ge=1, description="a longer prompt is refused (413)")
    max_upload_bytes: int = Field(ge=1024, description="a larger drawing or SDF is refused (413)")
    max_query_chars: int = Field(ge=1, description="a longer browse query (CID, words, SMARTS) is refused (413)")
    page_size: int = Field(ge=1, le=200, description="molecules per page of the browse gallery")


class InstructionsParams(_Section):
    seed: int = Field(ge=0, description="phrasings are drawn per (seed, cid, task)")
    tasks: list[Task] = Field(min_length=1)
    properties: list[Literal["mw", "logp", "tpsa", "complexity"]] = Field(
        description="computed properties asked about in property_qa examples"
    )


class EncoderParams(_Section):
    image_size: int = Field(ge=16, description="drawings are resized to this square size for the encoder")
    patch_size: int = Field(ge=2)
    sam_hidden: int = Field(ge=8)
    sam_layers: int = Field(ge=1)
    sam_heads: int = Field(ge=1)
    sam_window: int = Field(ge=1, description="windowed attention size (patches)")
    sam_global_layers: list[int] = Field(description="layers with global attention")
    sam_neck: int = Field(ge=4)
    compressor: list[int] = Field(min_length=2, max_length=2, description="channels of the two stride-2 convolutions")
    clip_layers: int = Field(ge=1)
    clip_heads: int = Field(ge=1)
    clip_mlp: int = Field(ge=4)


class FusionParams(_Section):
    num_heads: int = Field(ge=1)
    ffn_mult: int = Field(ge=1)
    dropout: float = Field(ge=0, lt=1)
    size_features: bool = Field(False, description="add an embedding of the heavy-atom count to every visual token "
                                                   "(not in the paper; see deepmolm/model/fusion.py)")
    e3fp_sum: bool = Field(False, description="add a projection of the sum of the E3FP tokens to every visual token: "
                                              "additive properties (TPSA, logP) are sums over atoms (not in the paper)")


class LanguageParams(_Section):
    vocab_size: int = Field(ge=16, description="replaced by the tokenizer's size when a model is built for training")
    hidden_size: int = Field(ge=8)
    intermediate_size: int = Field(ge=8)
    num_hidden_layers: int = Field(ge=1)
    num_attention_heads: int = Field(ge=1)
    num_key_value_heads: int = Field(ge=1)
    max_position_embeddings: int = Field(ge=16)
    rope_theta: float = Field(gt=0)
    tie_word_embeddings: bool


class PresetParams(_Section):
    encoder: EncoderParams
    fusion: FusionParams
    language: LanguageParams


class GenerationParams(_Section):
    max_new_tokens: int = Field(ge=1)
    min_new_tokens: int = Field(ge=0, description="captions only: no caption ends before this many tokens (0: off)")
    num_beams: int = Field(ge=1, description="1: greedy decoding")
    repetition_penalty: float = Field(ge=1, description="transformers' repetition penalty (1: none)")
    no_repeat_ngram_size: int = Field(ge=0, description="no token n-gram of this size twice in an answer (0: off)")

    @model_validator(mode="after")
    def _floor_within_budget(self) -> GenerationParams:
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(f"min_new_tokens {self.min_new_tokens} is above max_new_tokens {self.max_new_tokens}")
        return self

    def decoding(self) -> dict:
        """The keyword arguments of `generate` besides the length bounds."""
        return {"num_beams": self.num_beams, "repetition_penalty": self.repetition_penalty,
                "no_repeat_ngram_size": self.no_repeat_ngram_size}


class ModelParams(_Section):
    preset: str = Field(description="one of the presets below")
    tokenizer_dir: ProjectPath | None = Field(
        description="a local Hugging Face tokenizer directory (a real LLM's); null: a byte-level BPE trained on the instructions"
    )
    bpe_vocab_size: int = Field(ge=300, description="vocabulary of the trained byte-level BPE")
    max_length: int = Field(ge=16, description="tokens per training example, image placeholders included")
    generation: GenerationParams
    fusion_variant: Literal["fusion", "fusion_zero_e3fp", "concat", "linear"] = Field(
        description="fusion (default); the paper's ablations: fusion_zero_e3fp, concat, linear"
    )
    presets: dict[str, PresetParams]

    @field_validator("presets")
    @classmethod
    def _some(cls, presets: dict) -> dict:
        if not presets:
            raise ValueError("at least one preset is needed")
        return presets


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
    epochs: int = Field(ge=1)
    max_steps: int | None = Field(ge=1, description="optimizer steps; null: epochs over the examples")
    learning_rate: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    warmup_ratio: float = Field(ge=0, lt=1, description="linear warmup over this fraction of the steps, then cosine")
    min_lr_ratio: float = Field(ge=0, le=1, description="the cosine ends at learning_rate * min_lr_ratio")
    lora: LoraParams | None = Field(default=None, description="stage 2 only")


class HoldoutParams(_Section):
    fraction: float = Field(ge=0, lt=0.5, description="share of train.splits molecules held out of training")
    seed: int = Field(ge=0, description="which molecules: a hash of (seed, cid)")


class InitWeightsParams(_Section):
    sam: ProjectPath | None = Field(description="local safetensors of a SAM model (vision_encoder.*); null: random")
    clip: ProjectPath | None = Field(description="local safetensors of a CLIP vision model; null: random")
    language: ProjectPath | None = Field(description="local safetensors of a Qwen2 / Qwen2-VL LM; null: random")


class ClusterParams(_Section):
    address: str | None = Field(description="a Ray cluster's Jobs API (http://HEAD:8265): the `train` deployment submits there")
    install_packages: bool = Field(description="the job's runtime_env installs requirements/lock.txt with pip")
    excludes: list[str] = Field(description="left out of the uploaded working_dir (gitignore-style patterns)")
    env_vars: dict[str, str] = Field(description="set in the job's environment")


class TrainParams(_Section):
    splits: list[Split] | None = Field(min_length=1, description="instruction rows of these splits are trained on; null: all rows")
    seed: int = Field(ge=0)
    runs_dir: StorageLocation = Field(description="Ray Train storage (checkpoints, step metrics): a path, or a URI such as s3://...")
    models_dir: ProjectPath = Field(description="exported weights: <models_dir>/stage1, <models_dir>/stage2")
    ray_address: str | None = Field(description="null: a local Ray (or the cluster a Jobs API job runs on)")
    scaling: ScalingParams
    strategy: Literal["ddp", "deepspeed"]
    precision: Literal["auto", "fp32", "bf16"] = Field(description="auto: bf16 on GPUs, fp32 on CPUs")
    deepspeed: DeepSpeedParams
    micro_batch_size: int = Field(ge=1, description="examples per worker per forward pass")
    grad_accum_steps: int = Field(ge=1)
    max_grad_norm: float = Field(gt=0, description="gradient clipping (global L2 norm)")
    adam_betas: list[float] = Field(min_length=2, max_length=2)
    adam_eps: float = Field(gt=0)
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
    cluster: ClusterParams = Field(description="`deepmolm train submit`: how the job is sent to a Ray cluster")
    stage1: StageParams
    stage2: StageParams

    @field_validator("stage1")
    @classmethod
    def _no_lora_in_stage1(cls, stage: StageParams) -> StageParams:
        if stage.lora is not None and stage.lora.enabled:
            raise ValueError("LoRA is for stage 2 (stage 1 trains the projector only)")
        return stage

    def stage(self, number: int) -> StageParams:
        if number not in (1, 2):
            raise ConfigError(f"there are stages 1 and 2, not {number}")
        return self.stage1 if number == 1 else self.stage2


class RefreshParams(_Section):
    sources: list[Literal["chebi20", "pubchem"]] = Field(min_length=1, description="what the scheduled refresh reads")
    pubchem_cid_file: ProjectPath | None = Field(description="the CIDs a pubchem refresh fetches, one per line")
    dvc_commit: bool = Field(description="record the refreshed outputs in dvc.lock")


class MuMoPresetParams(_Section):
    hidden_size: int = Field(ge=8)
    num_hidden_layers: int = Field(ge=1)
    attention_every: int = Field(ge=0, description="layer n is self-attention when n is a multiple of this; 0: Mamba only")
    num_attention_heads: int = Field(ge=1)
    mlp_ratio: int = Field(ge=1)
    state_size: int = Field(ge=1, description="Mamba's SSM state per channel")
    conv_kernel: int = Field(ge=1)
    expand: int = Field(ge=1, description="Mamba's inner width = expand x hidden_size")
    graph_hidden_size: int = Field(ge=8)
    graph_layers: int = Field(ge=1)
    rbf_bins: int = Field(ge=2, description="radial basis functions for bond lengths and angles")
    dropout: float = Field(ge=0, lt=1)


class MuMoTrainParams(_Section):
    """One kind of MuMo run (pretraining or fine-tuning); the learning-rate fields mirror a DeepMoLM
    stage's so both go through the same DDP strategy."""

    epochs: int = Field(ge=1)
    max_steps: int | None = Field(ge=1, description="per run; null: epochs over the molecules")
    batch_size: int = Field(ge=1, description="molecules per optimizer step, over all workers")
    learning_rate: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    warmup_ratio: float = Field(ge=0, lt=1)
    min_lr_ratio: float = Field(ge=0, le=1)


class MuMoPretrainParams(MuMoTrainParams):
    mask_ratio: float = Field(gt=0, lt=1, description="SMILES tokens masked per molecule (BERT's 80/10/10)")


class MuMoFinetuneParams(MuMoTrainParams):
    datasets: list[Literal["esol", "freesolv"]] = Field(min_length=1)
    splits: list[Literal["random", "scaffold"]] = Field(min_length=1, description="80/10/10 splits, seeded")
    seeds: list[int] = Field(min_length=1)
    max_molecules: int | None = Field(ge=10, description="the first rows of each dataset only (a quick run); null: all")


class MuMoAblationParams(_Section):
    injection_layers: list[int] = Field(description="extra fine-tuning runs with the prior injected from these layers")
    dataset: Literal["esol", "freesolv"]
    split: Literal["random", "scaffold"]
    seeds: list[int]
    coordinate_noise: list[float] = Field(description="Gaussian noise (angstrom, per coordinate) on test conformers")


class MuMoParams(_Section):
    preset: str = Field(description="one of the presets below")
    injection_layer: int = Field(ge=1, description="the structural prior enters the global token from this layer (1-based) on")
    sfp: bool = Field(description="featurize also writes each shard version's unified graphs (<version>/sfp/)")
    max_length: int = Field(ge=8, description="SMILES tokens per molecule, the global token included")
    property_dir: ProjectPath = Field(description="MoleculeNet files: delaney-processed.csv (ESOL), SAMPL.csv (FreeSolv)")
    models_dir: ProjectPath = Field(description="exported MuMo models: <models_dir>/pretrained")
    reports_dir: ProjectPath = Field(description="the benchmark's results.json, results.md and figures")
    presets: dict[str, MuMoPresetParams]
    pretrain: MuMoPretrainParams
    finetune: MuMoFinetuneParams
    ablation: MuMoAblationParams
    baseline_trees: int = Field(ge=1, description="the random forest beside MuMo (Morgan bits + RDKit descriptors)")

    @model_validator(mode="after")
    def _layers_exist(self) -> MuMoParams:
        if self.preset not in self.presets:
            raise ValueError(f"mumo.preset {self.preset!r} is not one of {sorted(self.presets)}")
        layers = self.presets[self.preset].num_hidden_layers
        for name, values in (("mumo.injection_layer", [self.injection_layer]),
                             ("mumo.ablation.injection_layers", self.ablation.injection_layers)):
            if bad := [v for v in values if not 1 <= v <= layers]:
                raise ValueError(f"{name} {bad}: preset {self.preset} has layers 1..{layers}")
        return self


class Params(_Section):
    recipe: str = Field(description="which entry of `recipes` is set over the sections below")
    recipes: dict[str, dict[str, Any] | None] = Field(description="named sets of dotted keys and their values")
    paths: PathsParams
    sources: SourcesParams
    ingest: IngestParams
    featurize: FeaturizeParams
    contracts: ContractsParams
    report: ReportParams
    instructions: InstructionsParams
    model: ModelParams
    train: TrainParams
    eval: EvalParams
    serve: ServeParams
    refresh: RefreshParams
    mumo: MuMoParams

    @model_validator(mode="after")
    def _consistent(self) -> Params:
        # train.splits null (every row: files without splits, as in tests) is allowed and said in the metrics
        if seen := sorted(set(self.train.splits or []) & set(self.eval.splits)):
            raise ValueError(f"eval.splits {seen} are also in train.splits: the model would be scored on what it learned from")
        preset = self.model.presets.get(self.model.preset)
        if preset is not None and preset.language.max_position_embeddings < self.model.max_length:
            raise ValueError(f"model.max_length ({self.model.max_length}) is over model.presets.{self.model.preset}"
                             f".language.max_position_embeddings ({preset.language.max_position_embeddings}): "
                             f"the language model is built for fewer positions than an example may have")
        return self

    def sections(self, *names: str) -> dict[str, Any]:
        """The named (dotted) sections as plain JSON data, e.g. for a manifest; all when none named."""
        data = self.model_dump(mode="json")
        chosen = {}
        for name in names:
            node = data
            for key in name.split("."):
                node = node[key]
            chosen[name] = node
        return chosen if names else data

    def section_hash(self, *names: str) -> str:
        """Stable hash of the named sections, for cache keys and manifests."""
        blob = json.dumps(self.sections(*names), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a", "b", "c"], value parsed as a YAML scalar or flow collection)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: expected KEY=VALUE with a dotted KEY, e.g. ingest.rows_per_part=1000")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: value {raw!r} is not valid YAML ({exc.problem})") from None
    return key.split("."), value


def _apply_override(data: dict, keys: list[str], value: Any, origin: str) -> None:
    node = data
    for depth, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"{origin}: {'.'.join(keys[: depth + 1])} is a value, not a section")
        node = child
    node[keys[-1]] = value


RECIPE_SECTIONS = ("model", "train", "eval")


def _apply_recipe(data: dict, origin_of: dict[str, str]) -> None:
    """`recipes[recipe]`: dotted keys set over the file's values, for the sizes the file's own values
    do not fit (a GPU preset with pretrained weights). The chosen recipe's keys are checked like any
    other key, and an error names the recipe entry it came from."""
    recipes, name = data.get("recipes"), data.get("recipe")
    if not isinstance(recipes, dict) or name is None:
        return  # the validation below names what is missing
    if name not in recipes:
        raise ConfigError(f"recipe {name!r} is not one of recipes: {', '.join(recipes)}")
    for key, value in (recipes[name] or {}).items():
        origin = f"recipes.{name}.{key}"
        if "." not in str(key):
            raise ConfigError(f"{origin}: a recipe sets dotted keys (section.key), not a whole section")
        if str(key).split(".")[0] not in RECIPE_SECTIONS:
            raise ConfigError(f"{origin}: a recipe sets keys of {', '.join(RECIPE_SECTIONS)} only (the DVC stages "
                              f"that read `recipe` are the ones that read those sections)")
        _apply_override(data, str(key).split("."), value, origin)
        origin_of[str(key)] = origin


def _describe_error(err: dict, origin_of: dict[str, str], default_origin: str) -> str:
    loc = ".".join(str(part) for part in err["loc"])
    origin = origin_of.get(loc, default_origin)
    if err["type"] == "extra_forbidden":
        return f"{origin}: unknown key {loc!r}"
    if err["type"] == "missing":
        return f"{origin}: missing key {loc!r}"
    got = err.get("input")
    got_text = json.dumps(got, default=str) if not isinstance(got, dict) else "a section"
    return f"{origin}: {loc}: {err['msg']} (got {got_text})"


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str] | None:
    """The keys a section accepts, to put beside an 'unknown key' error."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return sorted(model.model_fields)


def load_params(path: Path | str = DEFAULT_PARAMS, overrides: list[str] | tuple[str, ...] = ()) -> Params:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    origin_of: dict[str, str] = {}
    parsed = [(parse_override(text), f"override -S {text}") for text in overrides]
    # the recipe first (its choice and its entries may be overridden), then the other overrides over it
    for (keys, value), origin in parsed:
        if keys[0] in ("recipe", "recipes"):
            _apply_override(data, keys, value, origin)
    _apply_recipe(data, origin_of)
    for (keys, value), origin in parsed:
        if keys[0] not in ("recipe", "recipes"):
            _apply_override(data, keys, value, origin)
            origin_of[".".join(keys)] = origin
    try:
        return Params.model_validate(data, context={"base_dir": path.resolve().parent})
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            line = _describe_error(err, origin_of, str(path))
            if err["type"] == "extra_forbidden":
                allowed = _allowed_keys(Params, err["loc"])
                if allowed:
                    line += f" (expected one of: {', '.join(allowed)})"
            lines.append(line)
        raise ConfigError("invalid params:\n  " + "\n  ".join(lines)) from None
