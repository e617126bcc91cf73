"""The `mumo` section: the structured graph, the MuMo presets, pre-training, fine-tuning and the ablation."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    model_validator,
)

from deepmolm.config.base import ProjectPath, _Section


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
    holdout_molecules: int = Field(ge=0, description="a seeded slice of the corpus never trained on: its MLM loss "
                                                     "(the same masks every time) before, after each epoch and at the end")
    holdout_every_steps: int | None = Field(ge=1, description="the held-out loss also every this many steps, "
                                                                "for the curve that sizes the budget; null: per epoch only")


class MuMoFinetuneParams(MuMoTrainParams):
    datasets: list[Literal["esol", "freesolv"]] = Field(min_length=1)
    splits: list[Literal["random", "scaffold"]] = Field(min_length=1, description="80/10/10 splits, seeded")
    seeds: list[int] = Field(min_length=1)
    max_molecules: int | None = Field(ge=10, description="the first rows of each dataset only (a quick run); null: all")
    pretrained_lr_ratio: float = Field(gt=0, le=1, description="the pretrained layers' learning rate as a fraction of "
                                                               "learning_rate, which the new head gets")
    dropout: float | None = Field(ge=0, lt=1, description="dropout while fine-tuning; null: the pretrained model's")


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
