"""Sections of the data side: sources, ingest, featurization, contracts, the data-quality page, instructions, refresh."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import (
    Field,
    field_validator,
)

from deepmolm.config.base import ProjectPath, Split, Task, _Section

# Every reason code a featurizer rejects with (the contracts warn on any other).
REJECT_REASONS = (
    "empty_molecule",
    "featurizer_error",
    "inchi_failed",
    "kekulization_failed",
    "sanitization_failed",
    "unparseable_smiles",
    "wildcard_atom",
)


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


class MosesParams(_Section):
    file: ProjectPath = Field(description="MOSES's train.csv.gz (a `SMILES` header, one SMILES a line; gzip or plain)")
    url: str = Field(description="where the file is published: each row's source_uri (the SHA-256 names the bytes)")
    sha256: str | None = Field(pattern=r"^[0-9a-f]{64}$", description="the file's known SHA-256; null: not checked")
    max_rows: int | None = Field(ge=1, description="the corpus size: the file's first rows read; null reads all 1,584,663")
    exclude_property_sets: list[Literal["esol", "freesolv"]] = Field(
        description="property sets whose molecules (by InChIKey) are rejected (benchmark_molecule)")


class SourcesParams(_Section):
    chebi20: Chebi20Params
    pubchem: PubChemParams
    moses: MosesParams


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
    max_heavy_atoms: int = Field(ge=1, description="larger molecules get no 3D conformer (see flat_fallback)")
    flat_fallback: bool = Field(description="a molecule without a 3D conformer gets its 2D depiction's coordinates "
                                            "(conformer_source=depiction_2d, flag flat_conformer) instead of none")


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


View = Literal["drawing", "e3fp"]
VIEWS: tuple[View, ...] = ("drawing", "e3fp")
VIEWS_ANY_SOURCE = "*"
# The sources a views key may name besides '*' (a local file ingested with `--source tsv` is "tsv").
VIEW_SOURCES = ("chebi20", "pubchem", "moses", "tsv")


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
    views: dict[str, list[View]] = Field(
        description="DeepMoLM's views (the drawing, the E3FP tokens) a source's records carry; '*' any source not listed"
    )

    @field_validator("views")
    @classmethod
    def _known_sources(cls, views: dict[str, list[View]]) -> dict[str, list[View]]:
        for key in views:
            if key not in (*VIEW_SOURCES, VIEWS_ANY_SOURCE):
                raise ValueError(f"unknown source {key!r} (known: {', '.join(VIEW_SOURCES)}, '*')")
        if VIEWS_ANY_SOURCE not in views:
            raise ValueError(f"no '{VIEWS_ANY_SOURCE}' entry: the views of a source not listed")
        return views

    def views_for(self, source: str) -> frozenset[View]:
        return frozenset(self.views.get(source, self.views[VIEWS_ANY_SOURCE]))


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
        for key, rate in rates.items():
            if key not in (*REJECT_REASONS, RATE_KEY_ANY, RATE_KEY_ALL):
                raise ValueError(f"unknown reject reason {key!r} (known: {', '.join(REJECT_REASONS)}, '*', '*all*')")
            if not 0 <= rate <= 1:
                raise ValueError(f"max_reject_rate.{key} must be a fraction in [0, 1], got {rate}")
        return rates

    @property
    def known_reject_reasons(self) -> tuple[str, ...]:
        return REJECT_REASONS


class ReportParams(_Section):
    gallery_size: int = Field(ge=0, description="molecules shown in the report's gallery")
    gallery_seed: int = Field(ge=0)
    thumbnail_px: int = Field(ge=64, le=1024, description="gallery images are scaled down to this width")


PropertyName = Literal["mw", "logp", "tpsa", "complexity", "homo", "lumo", "gap", "scf_energy"]


class InstructionsParams(_Section):
    seed: int = Field(ge=0, description="phrasings are drawn per (seed, cid, task)")
    tasks: list[Task] = Field(min_length=1)
    properties: list[Literal["mw", "logp", "tpsa", "complexity"]] = Field(
        description="computed properties asked about in property_qa examples"
    )


class RefreshParams(_Section):
    sources: list[Literal["chebi20", "pubchem"]] = Field(min_length=1, description="what the scheduled refresh reads")
    pubchem_cid_file: ProjectPath | None = Field(description="the CIDs a pubchem refresh fetches, one per line")
    dvc_commit: bool = Field(description="record the refreshed outputs in dvc.lock")


