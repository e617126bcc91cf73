"""Pieces every config section is built from: strict frozen sections, project-relative paths, the error type."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationInfo,
)

from deepmolm.runtime.run_log import portable_path

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
