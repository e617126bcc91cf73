"""params.yaml -> typed, frozen config: one module per group of sections, loading in `loading`.

params.yaml is the one home of every knob. Unknown keys and invalid values are errors that name the
key, the file (or the ``-S`` override) and what was expected, so a typo never silently falls back to a
default. Relative paths are resolved against the directory of the params file, so a command behaves
the same from any working directory; dumped as JSON (manifests, hashes, run names) they are relative
to the project root again, so two clones dump the same params (deepmolm/runtime/run_log.py).
"""

from __future__ import annotations

# What the rest of the library imports: `from deepmolm.config import Params, load_params`.
from deepmolm.config.base import (
    DEFAULT_PARAMS,
    TASKS,
    ConfigError,
    PathsParams,
    ProjectPath,
    Split,
    StorageLocation,
    Task,
)
from deepmolm.config.data import (
    RATE_KEY_ALL,
    RATE_KEY_ANY,
    REJECT_REASONS,
    VIEWS,
    Chebi20Params,
    ConformerParams,
    ContractsParams,
    DaskParams,
    E3fpParams,
    FeaturizeParams,
    IngestParams,
    InstructionsParams,
    PropertyName,
    PubChemParams,
    RefreshParams,
    RenderParams,
    ReportParams,
    SourcesParams,
    View,
)
from deepmolm.config.evaluation import (
    AblationParams,
    BaselineParams,
    DrawingDependenceParams,
    EvalParams,
    RestyleParams,
    RobustnessParams,
    ServeParams,
)
from deepmolm.config.loading import (
    RECIPE_SECTIONS,
    Params,
    changed_by_overrides,
    load_params,
    parse_override,
    sections_hash,
)
from deepmolm.config.models import (
    EncoderParams,
    FusionParams,
    GenerationParams,
    LanguageParams,
    ModelParams,
    PresetParams,
)
from deepmolm.config.mumo import (
    MuMoAblationParams,
    MuMoFinetuneParams,
    MuMoParams,
    MuMoPresetParams,
    MuMoPretrainParams,
    MuMoTrainParams,
)
from deepmolm.config.numerics import NumericsParams
from deepmolm.config.training import (
    ClusterParams,
    DeepSpeedParams,
    HoldoutParams,
    InitWeightsParams,
    LoraParams,
    NumberHeadRefitParams,
    ScalingParams,
    StageParams,
    TrainParams,
)

__all__ = [
    "VIEWS",
    "View",
    "AblationParams",
    "BaselineParams",
    "Chebi20Params",
    "changed_by_overrides",
    "sections_hash",
    "ClusterParams",
    "ConfigError",
    "ConformerParams",
    "ContractsParams",
    "DEFAULT_PARAMS",
    "DaskParams",
    "DrawingDependenceParams",
    "DeepSpeedParams",
    "E3fpParams",
    "EncoderParams",
    "EvalParams",
    "FeaturizeParams",
    "FusionParams",
    "GenerationParams",
    "HoldoutParams",
    "IngestParams",
    "InitWeightsParams",
    "InstructionsParams",
    "LanguageParams",
    "LoraParams",
    "ModelParams",
    "MuMoAblationParams",
    "MuMoFinetuneParams",
    "MuMoParams",
    "MuMoPresetParams",
    "MuMoPretrainParams",
    "MuMoTrainParams",
    "NumericsParams",
    "NumberHeadRefitParams",
    "Params",
    "PathsParams",
    "PresetParams",
    "ProjectPath",
    "PropertyName",
    "PubChemParams",
    "RATE_KEY_ALL",
    "RATE_KEY_ANY",
    "RECIPE_SECTIONS",
    "REJECT_REASONS",
    "RefreshParams",
    "RenderParams",
    "ReportParams",
    "RestyleParams",
    "RobustnessParams",
    "ScalingParams",
    "ServeParams",
    "SourcesParams",
    "Split",
    "StageParams",
    "StorageLocation",
    "TASKS",
    "Task",
    "TrainParams",
    "load_params",
    "parse_override",
]
