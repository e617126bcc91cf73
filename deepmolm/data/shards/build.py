"""Building one shard version from one raw-table snapshot, as steps a scheduler can spread out.

plan_version decides the version id, which parts are still missing (resume) and which molecules an
earlier version with the same featurization params already holds (incremental refresh: the cache
key is input hash + params hash, and the earlier versions are the cache). build_part featurizes one
chunk into one part (or copies it, when an earlier version holds every row); build_parts is what a
Dask worker runs. finish_version publishes. build_version is the
whole order (plan, the missing parts, publish, then MuMo's SFP table over the published parts),
with the parallel steps handed to a `PartRunner`: in-process by default, Prefect tasks on Dask in
flows/featurize.py. So the library builds, resumes and publishes a version without Prefect.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from deepmolm.config import FeaturizeParams, Params, sections_hash
from deepmolm.data.featurize.record import FEATURIZER_VERSION, FeaturizeRejection, StepTimer, input_hash
from deepmolm.data.featurize.sandbox import shared_sandbox
from deepmolm.data.shards.parts import (
    REJECTS,
    SHARD_REJECTS_SCHEMA,
    SHARD_SCHEMA,
    PartResult,
    copy_part,
    finished_parts,
    list_versions,
    publish_version,
    read_manifest,
    sum_counts,
    version_id,
    write_part,
)
from deepmolm.data.shards.sfp_table import pending_parts, publish_sfp, write_sfp_part
from deepmolm.data.sources.raw_table import read_manifest as read_raw_manifest
from deepmolm.data.sources.raw_table import read_raw_rows, resolve_snapshot
from deepmolm.runtime.progress import progress_bar
from deepmolm.runtime.run_log import log_run, portable_path
from deepmolm.store.files import StorageError, storage_problem
from deepmolm.store.versions import MANIFEST, mark_latest

# The params a record depends on. rows_per_part changes only how records are cut into parts, so it
# is in the version id but not in the cache key. A view the source's records leave out takes its
# section out too (the views, then, in): a version of all views hashes as before views were a param.
VIEW_SECTIONS = {"drawing": "featurize.render", "e3fp": "featurize.e3fp"}
FEATURE_SECTIONS = (*VIEW_SECTIONS.values(), "featurize.conformer", "featurize.time_limit_s")
VERSION_SECTIONS = (*FEATURE_SECTIONS, "featurize.rows_per_part")


def version_params(params: Params, dataset: str, sections: tuple[str, ...] = VERSION_SECTIONS) -> dict:
    """The params sections the dataset's records (and parts) depend on, as the manifest records them."""
    views = params.featurize.views_for(dataset)
    dropped = {section for view, section in VIEW_SECTIONS.items() if view not in views}
    chosen = params.sections(*(name for name in sections if name not in dropped))
    if dropped:
        chosen["featurize.views"] = sorted(views)
    return chosen


@dataclass(frozen=True)
class Chunk:
    """One Dask task: raw rows [start, stop) -> part `index`; `reuse` maps input hashes to the
    file of an earlier version that already holds their record or rejection."""

    index: int
    start: int
    stop: int
    reuse: dict[str, str] = field(default_factory=dict)
    cost: float = 0.0  # expected work, to start the longest parts first


@dataclass(frozen=True)
class VersionPlan:
    dataset: str
    version: str
    raw_snapshot_dir: str
    building: str
    final: str
    params: FeaturizeParams
    features_hash: str
    version_hash: str
    params_sections: dict
    input_rows: int
    logs_dir: str  # the run log's directory (paths.logs_dir)
    chunks: tuple[Chunk, ...]  # all parts of the version
    done: tuple[int, ...] = ()  # parts finished by an earlier, interrupted run
    published: bool = False  # the version exists already: nothing to do

    def missing(self) -> list[Chunk]:
        """Parts still to build, most expensive first: the last parts to finish are then short ones,
        so workers run out of work at nearly the same time."""
        todo = [c for c in self.chunks if c.index not in self.done]
        return sorted(todo, key=lambda c: (-c.cost, c.index))


@dataclass(frozen=True)
class FeaturizeSummary:
    dataset: str
    version: str
    out: str
    input_rows: int
    accepted: int
    rejected: int
    rejected_by_reason: dict[str, int]
    reused: int
    parts: int
    resumed_parts: int
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def plan_version(raw: Path, shards_root: Path, params: Params) -> VersionPlan:
    snapshot_dir = resolve_snapshot(Path(raw))
    raw_manifest = read_raw_manifest(snapshot_dir)
    dataset = raw_manifest["source"]
    version_sections = version_params(params, dataset)
    version_hash = _with_featurizer_version(sections_hash(version_sections))
    features_hash = _with_featurizer_version(sections_hash(version_params(params, dataset, FEATURE_SECTIONS)))
    version = version_id(raw_manifest["snapshot"], version_hash)
    dataset_dir = Path(shards_root) / dataset
    final, building = dataset_dir / version, dataset_dir / f".building-{version}"
    common = dict(
        dataset=dataset,
        version=version,
        raw_snapshot_dir=str(snapshot_dir),
        logs_dir=str(params.paths.logs_dir),
        building=str(building),
        final=str(final),
        params=params.featurize,
        features_hash=features_hash,
        version_hash=version_hash,
        params_sections=version_sections,
        input_rows=raw_manifest["counts"]["accepted"],
    )
    if (final / MANIFEST).is_file():
        return VersionPlan(**common, chunks=(), published=True)
    building.mkdir(parents=True, exist_ok=True)
    size = params.featurize.rows_per_part
    n = common["input_rows"]
    rows = read_raw_rows(snapshot_dir, 0, n) if n else []
    hashes = [input_hash(row) for row in rows]
    cached = _cache_index(dataset_dir, features_hash, exclude=final)
    chunks = []
    for i, start in enumerate(range(0, n, size)):
        reuse = {h: cached[h] for h in hashes[start : start + size] if h in cached}
        cost = sum(_expected_cost(row) for row, h in zip(rows[start : start + size], hashes[start : start + size])
                   if h not in reuse)
        chunks.append(Chunk(i, start, min(start + size, n), reuse, cost))
    chunks = tuple(chunks)
    return VersionPlan(**common, chunks=chunks, done=tuple(sorted(finished_parts(building))))


def _with_featurizer_version(params_hash: str) -> str:
    """Same params but a featurizer that now writes other values: neither the cache nor the version
    id may match the old output."""
    return hashlib.sha256(f"{params_hash}:{FEATURIZER_VERSION}".encode()).hexdigest()[:16]


def _expected_cost(row: dict) -> float:
    """Conformer time grows roughly with the square of the molecule's size (docs/benchmarks.md);
    the SMILES length stands in for the size without parsing anything."""
    return float(len(row["smiles"]) ** 2)


def _cache_index(dataset_dir: Path, features_hash: str, exclude: Path) -> dict[str, str]:
    """input hash -> file holding its result, over earlier versions built with the same params."""
    index: dict[str, str] = {}
    if not dataset_dir.is_dir():
        return index
    for version_dir in list_versions(dataset_dir):
        manifest = read_manifest(version_dir)
        if version_dir == exclude or manifest.get("features_hash") != features_hash:
            continue
        files = [version_dir / p["path"] for p in manifest["parts"]] + [version_dir / REJECTS]
        for path in files:
            for h in pq.read_table(path, columns=["input_hash"]).column("input_hash").to_pylist():
                index[h] = str(path)
    return index


def _cached_rows(reuse: dict[str, str]) -> dict[str, dict]:
    by_file: dict[str, list[str]] = defaultdict(list)
    for h, path in reuse.items():
        by_file[path].append(h)
    found = {}
    for path, hashes in by_file.items():
        schema = SHARD_REJECTS_SCHEMA if Path(path).name == REJECTS else SHARD_SCHEMA
        table = pq.read_table(path, schema=schema, filters=[("input_hash", "in", hashes)])
        found.update({row["input_hash"]: row for row in table.to_pylist()})
    return found


def build_part(plan: VersionPlan, chunk: Chunk) -> PartResult:
    """Featurize rows [start, stop) (or take them from the cache) and write part `index` atomically."""
    if (source := _same_part(chunk)) is not None:
        return copy_part(Path(plan.building), chunk.index, source)
    rows = read_raw_rows(Path(plan.raw_snapshot_dir), chunk.start, chunk.stop)
    cached = _cached_rows(chunk.reuse)
    timer, featurize = StepTimer(), shared_sandbox()
    records, rejects, reused = [], [], 0
    for row in rows:
        key = input_hash(row)
        if key in cached:
            hit = cached[key]
            (rejects if "reason" in hit else records).append(hit)
            reused += 1
            continue
        outcome = featurize(row, plan.params, timer)
        if isinstance(outcome, FeaturizeRejection):
            rejects.append(asdict(outcome))
        else:
            records.append(outcome)
    return write_part(Path(plan.building), chunk.index, records, rejects, reused=reused, seconds_by_step=dict(timer.seconds))


def _same_part(chunk: Chunk) -> Path | None:
    """The earlier part that holds exactly the chunk's rows in the chunk's order, if one does (a
    refresh that appends rows or edits a few leaves most parts so): the part is then a file copy."""
    files = set(chunk.reuse.values())
    if len(chunk.reuse) != chunk.stop - chunk.start or len(files) != 1:
        return None
    source = Path(files.pop())
    if source.name == REJECTS:
        return None
    held = pq.read_table(source, columns=["input_hash"]).column("input_hash").to_pylist()
    return source if held == list(chunk.reuse) else None


# Parts whose every row an earlier version holds are copies (about 0.1 s each, where featurizing a
# part takes seconds): this many go to one scheduler call, so a refresh does not pay a task's
# orchestration per copied part.
COPIES_PER_CALL = 32


# SFP graphs of one part take about a second with conformers (and far less without): a few parts
# per scheduler call, so the table of a large version does not pay a task's orchestration per part.
SFP_PARTS_PER_CALL = 8


def write_sfp_parts(version_dir: Path, parts: tuple[str, ...]) -> list:
    """write_sfp_part of each part, a StorageFailure in place of one the storage refused."""
    return [_storage_guarded(write_sfp_part, version_dir, part) for part in parts]


def build_parts(plan: VersionPlan, chunks: tuple[Chunk, ...]) -> list:
    """build_part of each chunk, a StorageFailure in place of a part the storage refused."""
    return [_storage_guarded(build_part, plan, chunk) for chunk in chunks]


def part_calls(plan: VersionPlan, slim: VersionPlan) -> list[tuple]:
    """The scheduler calls of a version's missing parts: one per part to featurize, most expensive
    first, then the copies in groups of COPIES_PER_CALL."""
    missing = plan.missing()
    copies = [c for c in missing if len(c.reuse) == c.stop - c.start]
    work = [c for c in missing if len(c.reuse) != c.stop - c.start]
    return [(slim, (c,)) for c in work] + [(slim, group) for group in _grouped(copies, COPIES_PER_CALL)]


def _grouped(items: list, size: int) -> list[tuple]:
    return [tuple(items[i:i + size]) for i in range(0, len(items), size)]


def finish_version(plan: VersionPlan, results: list[PartResult], started: float) -> FeaturizeSummary:
    built: list[PartResult] = []
    if plan.published:
        manifest = read_manifest(Path(plan.final))
    else:
        by_index = {**finished_parts(Path(plan.building)), **{r.index: r for r in results}}
        built = list(by_index.values())
        missing = [c.index for c in plan.chunks if c.index not in by_index]
        if missing:
            raise RuntimeError(f"parts {missing} of version {plan.version} were not built")
        manifest = publish_version(
            Path(plan.building),
            Path(plan.final),
            built,
            {
                "dataset": plan.dataset,
                "version": plan.version,
                "params_hash": plan.version_hash,
                "features_hash": plan.features_hash,
                "featurizer_version": FEATURIZER_VERSION,
                "params": plan.params_sections,
                "input": {"raw_snapshot_dir": portable_path(plan.raw_snapshot_dir, start=plan.final),
                          "raw_snapshot": Path(plan.raw_snapshot_dir).name},
            },
        )
    counts = manifest["counts"]
    if counts["input_rows"] != plan.input_rows:
        raise AssertionError(f"row accounting broke: {counts['input_rows']} rows in the version, {plan.input_rows} in the input")
    mark_latest(Path(plan.final))
    reused = sum(p.reused for p in built)
    seconds = round(time.perf_counter() - started, 3)
    log_run(Path(plan.logs_dir), "featurize", plan.final, version=plan.version, raw_snapshot_dir=plan.raw_snapshot_dir,
            built_parts=len(built), resumed_parts=len(plan.done), reused=reused, seconds=seconds,
            seconds_by_step={k: round(v, 3) for k, v in sum_counts([p.seconds_by_step for p in built]).items()})
    return FeaturizeSummary(
        dataset=plan.dataset,
        version=plan.version,
        out=plan.final,
        input_rows=counts["input_rows"],
        accepted=counts["accepted"],
        rejected=counts["rejected"],
        rejected_by_reason=manifest["rejected_by_reason"],
        reused=reused,
        parts=len(manifest["parts"]),
        resumed_parts=len(plan.done),
        seconds=seconds,
    )


# How the parallel steps run: (step name, function, one argument tuple per call) -> the results, in
# the order they finish. A scheduler may run the calls anywhere; each call is a pure library call.
PartRunner = Callable[[str, Callable, list[tuple]], Iterable]


def in_process(name: str, fn: Callable, calls: list[tuple]) -> Iterator:
    for args in calls:
        yield fn(*args)


def build_version(raw: Path, shards_root: Path, params: Params, *, run: PartRunner = in_process,
                  progress: bool = False) -> tuple[FeaturizeSummary, dict | None]:
    """Plan, build the missing parts, publish, then the SFP table when `mumo.sfp` asks for it:
    (the version's summary, the SFP table's counts or None). Storage that cannot take the version
    (full, read-only) raises one StorageError that says what is kept; its parts are not retried."""
    started = time.perf_counter()
    with _storage(f"under {shards_root}: no shard version could be started, nothing was written"):
        plan = plan_version(Path(raw), Path(shards_root), params)
    slim = dataclasses.replace(plan, chunks=())  # each call carries its own chunks only
    results, failures = [], []
    with progress_bar(f"featurize {plan.dataset}", sum(c.stop - c.start for c in plan.missing()), enabled=progress) as advance:
        for built in run("featurize-parts", build_parts, part_calls(plan, slim)):
            for result in built:
                if isinstance(result, StorageFailure):
                    failures.append(result)
                    continue
                results.append(result)
                advance(result.rows + result.rejected)

    def kept() -> str:
        return (f"{len(finished_parts(Path(plan.building)))} of {len(plan.chunks)} parts are written and kept in "
                f"{plan.building}, nothing is published; make room and run the same command again: it resumes from them")

    if failures:
        raise StorageError(f"{failures[0].problem} while writing shard version {plan.dataset}/{plan.version} "
                           f"({failures[0].detail}): {kept()}")
    with _storage(f"while publishing shard version {plan.dataset}/{plan.version}", kept):
        summary = finish_version(plan, results, started)
    sfp = None
    if params.mumo.sfp and (pending := pending_parts(Path(summary.out))):
        def sfp_kept() -> str:
            return "the version is published and the table's finished parts are kept; make room and run it again"

        with _storage(f"while writing the SFP table of {summary.out}", sfp_kept):
            calls = [(Path(summary.out), group) for group in _grouped(pending, SFP_PARTS_PER_CALL)]
            done = [d for built in run("sfp-parts", write_sfp_parts, calls) for d in built]
            if failure := next((d for d in done if isinstance(d, StorageFailure)), None):
                raise OSError(failure.errno, failure.detail)
            sfp = publish_sfp(Path(summary.out), done)["counts"]
    return summary, sfp


@dataclass(frozen=True)
class StorageFailure:
    """A part that the storage refused, returned instead of raised: a scheduler would retry an
    exception (and log its traceback), and a full disk stays full."""
    errno: int
    problem: str
    detail: str


def _storage_guarded(fn: Callable, *args):
    try:
        return fn(*args)
    except OSError as exc:
        if (problem := storage_problem(exc)) is None:
            raise
        return StorageFailure(exc.errno, problem, str(exc))


@contextmanager
def _storage(what: str, kept: Callable[[], str] | None = None) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if (problem := storage_problem(exc)) is None:
            raise
        raise StorageError(f"{problem} {what} ({exc})" + (f": {kept()}" if kept else "")) from None
