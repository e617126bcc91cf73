"""params.yaml -> `Params`: recipes and `-S` overrides applied, errors that name the key and where it came from."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    model_validator,
)

from deepmolm.config.base import DEFAULT_PARAMS, ConfigError, PathsParams, _Section
from deepmolm.config.data import (
    ContractsParams,
    FeaturizeParams,
    IngestParams,
    InstructionsParams,
    RefreshParams,
    ReportParams,
    SourcesParams,
)
from deepmolm.config.evaluation import EvalParams, ServeParams
from deepmolm.config.models import ModelParams
from deepmolm.config.mumo import MuMoParams
from deepmolm.config.numerics import NumericsParams
from deepmolm.config.training import TrainParams
from deepmolm.runtime.run_log import PROJECT_ROOT_ENV


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
    numerics: NumericsParams

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
        if self.train.number_head_refit.per_view and not (self.model.number_head and self.train.number_head_refit.steps):
            raise ValueError("train.number_head_refit.per_view needs model.number_head and train.number_head_refit.steps "
                             "> 0: it splits the head that the refit fits")
        refit = self.train.number_head_refit.steps and self.model.number_head
        if refit and self.train.strategy == "deepspeed" and self.train.deepspeed.zero_stage == 3:
            raise ValueError("train.number_head_refit.steps > 0 needs whole weights on every worker: "
                             "set it to 0 or train.deepspeed.zero_stage to 2 (ZeRO-3 shards the number head)")
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
        return sections_hash(self.sections(*names))


def sections_hash(sections: dict[str, Any]) -> str:
    """section_hash of sections already chosen (e.g. some left out, as a shard version's are)."""
    blob = json.dumps(sections, sort_keys=True, separators=(",", ":"))
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
    submitted_from = os.environ.get(PROJECT_ROOT_ENV)  # a job on a Ray cluster: the project it was sent from
    base_dir = Path(submitted_from) if submitted_from else path.resolve().parent
    try:
        params = Params.model_validate(data, context={"base_dir": base_dir})
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
    if submitted_from and not base_dir.is_dir():
        as_written = _flat(Params.model_validate(data, context={}).model_dump())
        unreachable = [key for key, value in _flat(params.model_dump()).items() if as_written[key] != value]
        if unreachable:
            raise ConfigError(f"this job runs in a copy of the project (Ray's working_dir), and the project it was "
                              f"submitted from, {base_dir} ({PROJECT_ROOT_ENV}), is not on this node, so the relative "
                              f"paths of {', '.join(unreachable)} lead nowhere: give each as storage every node sees, "
                              f"-S KEY=/shared/... (infra/README.md)")
    return params


def changed_by_overrides(params_file: Path | str, overrides: list[str], keys: list[str]) -> list[str]:
    """Which of the dotted `keys` (a DVC stage's params) the overrides give another value than the
    params file does; a recipe an override picks counts by what it sets."""
    if not overrides:
        return []
    as_filed = _flat(load_params(params_file).model_dump(mode="json"))
    overridden = _flat(load_params(params_file, overrides).model_dump(mode="json"))
    return sorted({key for key in keys for name in as_filed
                   if (name == key or name.startswith(key + ".")) and as_filed[name] != overridden[name]})


def _flat(values: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat
