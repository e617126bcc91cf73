"""Ingest: a source's rows -> one raw-table snapshot, every input row accepted or rejected.

The sources yield records and rejections; this module adds what only the whole ingest can know
(a CID seen twice, across splits too, keeps its first row) and publishes the snapshot atomically.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from deepmolm.config import Params
from deepmolm.data.property_sets import property_set_inchikeys
from deepmolm.data.sources import chebi20, moses, pubchem, tsv
from deepmolm.data.sources.errors import BatchFetchError, LayoutError, RequestError
from deepmolm.data.sources.raw_table import RawTableWriter
from deepmolm.data.sources.records import InputRef, RawRecord, Reason, Rejection, cid_problem
from deepmolm.runtime.progress import progress_bar
from deepmolm.runtime.run_log import log_run, portable_path
from deepmolm.store.files import sha256_file


@dataclass(frozen=True)
class IngestSummary:
    source: str
    snapshot: str
    out: str
    input_rows: int
    accepted: int
    rejected: int
    rejected_by_reason: dict[str, int]
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


class _FirstCidWins:
    """Turns the second and later rows of a CID into duplicate_cid rejections."""

    def __init__(self) -> None:
        self.first_seen: dict[int, str] = {}

    def __call__(self, item: RawRecord | Rejection) -> RawRecord | Rejection:
        if isinstance(item, Rejection):
            return item
        where = f"{item.split or item.source} line {item.source_line}" if item.source_line else item.source_uri
        if item.cid in self.first_seen:
            return Rejection(
                item.source,
                item.split,
                str(item.cid),
                item.smiles,
                item.source_line,
                Reason.DUPLICATE_CID,
                f"CID {item.cid} already taken from {self.first_seen[item.cid]}",
            )
        self.first_seen[item.cid] = where
        return item


def _writer(params: Params, source: str, out_root: Path | None) -> RawTableWriter:
    return RawTableWriter(
        out_root or params.paths.raw_dir,
        source,
        rows_per_part=params.ingest.rows_per_part,
        reject_text_chars=params.ingest.reject_text_chars,
    )


def _publish(
    writer: RawTableWriter,
    params: Params,
    sections: tuple[str, ...],
    inputs: list[InputRef],
    started: float,
    input_rows: int,
) -> IngestSummary:
    if writer.accepted + writer.rejected != input_rows:
        raise AssertionError(
            f"row accounting broke: {writer.accepted} accepted + {writer.rejected} rejected != {input_rows} input rows"
        )
    out = writer.publish(inputs=inputs, params=params.sections(*sections), params_hash=params.section_hash(*sections))
    seconds = round(time.perf_counter() - started, 3)
    log_run(params.paths.logs_dir, "ingest", out, source=writer.source, snapshot=out.name, seconds=seconds,
            read_from=[ref.extra.get("read_from", ref.uri) for ref in inputs])
    return IngestSummary(
        source=writer.source,
        snapshot=out.name,
        out=str(out),
        input_rows=input_rows,
        accepted=writer.accepted,
        rejected=writer.rejected,
        rejected_by_reason=writer.rejected_by_reason(),
        seconds=seconds,
    )


def _write_layout_files(
    params: Params,
    source: str,
    files: list[tuple[Path, str | None, str, str]],
    out_root: Path | None,
    progress: bool,
    sections: tuple[str, ...],
    extra: dict[str, dict] | None = None,
    max_rows_per_file: int | None = None,
) -> IngestSummary:
    """Files in the ChEBI-20 layout -> one snapshot. `files` holds (path, split, uri, sha256).

    With `max_rows_per_file`, only the first rows of each file are read (and accounted for)."""
    started = time.perf_counter()
    dedupe = _FirstCidWins()
    inputs: list[InputRef] = []
    for path, *_ in files:
        tsv.check_layout(path)  # refuse unusable files before any work starts
    total = sum(min(tsv.count_rows(path), max_rows_per_file or sys.maxsize) for path, *_ in files)
    input_rows = 0
    with _writer(params, source, out_root) as writer, progress_bar(f"ingest {source}", total, enabled=progress) as advance:
        for path, split, uri, digest in files:
            rows = 0
            for item in tsv.read_layout(
                path,
                source=source,
                split=split,
                uri=uri,
                sha256=digest,
                max_smiles_chars=params.ingest.max_smiles_chars,
                max_description_chars=params.ingest.max_description_chars,
            ):
                if max_rows_per_file is not None and rows >= max_rows_per_file:
                    break
                item = dedupe(item)
                writer.reject(item) if isinstance(item, Rejection) else writer.add(item)
                rows += 1
                if rows % 500 == 0:
                    advance(500)
            advance(rows % 500)
            input_rows += rows
            inputs.append(InputRef(uri=uri, sha256=digest, split=split, rows=rows, extra=(extra or {}).get(uri, {})))
        return _publish(writer, params, sections, inputs, started, input_rows)


def ingest_chebi20(
    params: Params, splits: Iterable[str] | None = None, *, out_root: Path | None = None, progress: bool = True
) -> IngestSummary:
    cfg = params.sources.chebi20
    chosen = list(dict.fromkeys(splits or cfg.splits))
    located = [chebi20.locate_split(cfg, split, params.paths.cache_dir) for split in chosen]
    files = [(f.path, f.split, f.uri, f.sha256) for f in located]
    extra = {f.uri: {"read_from": portable_path(f.path), "origin": f.origin} for f in located}
    return _write_layout_files(
        params, "chebi20", files, out_root, progress, ("sources.chebi20", "ingest"), extra, cfg.max_rows_per_split
    )


def ingest_tsv(
    params: Params,
    path: Path,
    *,
    split: str | None = None,
    source: str = "tsv",
    out_root: Path | None = None,
    progress: bool = True,
) -> IngestSummary:
    path = Path(path).resolve()
    tsv.check_layout(path)
    files = [(path, split, path.as_uri(), sha256_file(path))]
    return _write_layout_files(params, source, files, out_root, progress, ("ingest",))


def ingest_moses(params: Params, *, out_root: Path | None = None, progress: bool = True) -> IngestSummary:
    """The first sources.moses.max_rows rows of MOSES's file -> a snapshot, the evaluated property
    sets' molecules rejected."""
    started = time.perf_counter()
    cfg = params.sources.moses
    located = moses.locate(cfg.file, cfg.url, cfg.sha256)
    excluded = property_set_inchikeys(cfg.exclude_property_sets, params.mumo.property_dir)
    input_rows = 0
    with _writer(params, moses.SOURCE, out_root) as writer, \
            progress_bar("ingest moses", cfg.max_rows, enabled=progress) as advance:
        for item in moses.read_rows(located, max_rows=cfg.max_rows, max_smiles_chars=params.ingest.max_smiles_chars,
                                    excluded=excluded):
            writer.reject(item) if isinstance(item, Rejection) else writer.add(item)
            input_rows += 1
            if input_rows % 1000 == 0:
                advance(1000)
        advance(input_rows % 1000)
        inputs = [InputRef(uri=located.uri, sha256=located.sha256, rows=input_rows,
                           extra={"read_from": portable_path(located.path), "excluded_molecules": len(excluded)})]
        return _publish(writer, params, ("sources.moses", "ingest"), inputs, started, input_rows)


def cid_tokens(text: str) -> list[str]:
    """`1, 2 3` -> ['1', '2', '3']: CIDs separated by commas or whitespace."""
    return [tok for tok in text.replace(",", " ").split()]


def read_cid_file(path: Path) -> list[tuple[str, int]]:
    """(token, line) for each line: the line's first comma- or whitespace-separated field.

    Every line is an input row, so a header or a blank line is accounted for as a rejection.
    """
    path = Path(path)
    if not path.is_file():
        raise LayoutError(f"{path}: no such file")
    lines = path.read_bytes().split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # the empty string after a final newline is not a row
    rows = []
    for line_no, raw in enumerate(lines, start=1):
        fields = cid_tokens(raw.decode("utf-8", errors="replace"))
        rows.append((fields[0] if fields else "", line_no))
    return rows


def _valid_cids(tokens: list[tuple[str, int | None]]) -> Iterator[tuple[int, Rejection | None]]:
    seen: set[int] = set()
    for token, line in tokens:
        if problem := cid_problem(token):
            reason, detail = problem
            if reason == Reason.MISSING_FIELD:
                reason, detail = Reason.EMPTY_LINE, "no CID on this line"
            yield 0, Rejection(pubchem.SOURCE, None, token or f"line {line}", None, line, reason, detail)
            continue
        cid = int(token)
        if cid in seen:
            yield cid, Rejection(pubchem.SOURCE, None, token, None, line, Reason.DUPLICATE_CID, f"CID {cid} listed twice")
            continue
        seen.add(cid)
        yield cid, None


def ingest_pubchem(
    params: Params,
    tokens: list[tuple[str, int | None]],
    *,
    out_root: Path | None = None,
    progress: bool = True,
    http=None,
) -> IngestSummary:
    """CID tokens (with their line numbers, if from a file) -> a PubChem snapshot."""
    started = time.perf_counter()
    cfg = params.sources.pubchem
    inputs: list[InputRef] = []
    with _writer(params, pubchem.SOURCE, out_root) as writer:
        cids = []
        for cid, rejection in _valid_cids(tokens):
            if rejection is None:
                cids.append(cid)
            else:
                writer.reject(rejection)
        batches = pubchem.batched(cids, cfg.batch_size)
        with (
            pubchem.PubChemClient(cfg, http=http) as client,
            ThreadPoolExecutor(max_workers=cfg.concurrency) as pool,
            progress_bar("fetch pubchem", len(cids), enabled=progress) as advance,
        ):
            fetch = lambda batch: client.fetch_batch(batch, max_smiles_chars=params.ingest.max_smiles_chars)  # noqa: E731
            futures = [pool.submit(fetch, batch) for batch in batches]
            for batch, future in zip(batches, futures):
                try:
                    result = future.result()
                except BatchFetchError as exc:
                    if cfg.on_batch_failure == "fail":
                        for other in futures:
                            other.cancel()
                        raise
                    for cid in exc.cids:
                        writer.reject(Rejection(pubchem.SOURCE, None, str(cid), None, None, Reason.FETCH_FAILED, str(exc.cause)))
                    advance(len(batch))
                    continue
                for record in result.records:
                    writer.add(record)
                for rejection in result.rejects:
                    writer.reject(rejection)
                inputs.extend(result.requests)
                advance(len(batch))
        return _publish(writer, params, ("sources.pubchem", "ingest"), inputs, started, len(tokens))


@dataclass(frozen=True)
class IngestRequest:
    """What to ingest, as plain data: the CLI builds it, a Prefect flow can carry it to a worker."""

    source: str
    splits: tuple[str, ...] = ()
    path: str | None = None
    cid_tokens: tuple[tuple[str, int | None], ...] = ()
    out_root: str | None = None


# The options each source takes on the command line; its names are the sources there are.
SOURCE_OPTIONS = {"chebi20": {"split"}, "tsv": {"split", "path"}, "pubchem": {"cids", "cid_file"}, "moses": set()}
SOURCES = tuple(SOURCE_OPTIONS)


def ingest_request(source: str, *, splits: list[str] | None = None, path: Path | None = None, cids: str | None = None,
                   cid_file: Path | None = None, out_root: Path | None = None) -> IngestRequest:
    """The one place a source name and its options become a request (the CLI, the refresh flow)."""
    given = {"split": splits, "path": path, "cids": cids, "cid_file": cid_file}
    if source not in SOURCE_OPTIONS:
        raise RequestError(f"unknown source {source!r}: expected {', '.join(SOURCES)}")
    if extra := [f"--{k.replace('_', '-')}" for k, v in given.items() if v and k not in SOURCE_OPTIONS[source]]:
        raise RequestError(f"--source {source} does not take {', '.join(extra)}")
    out = str(out_root) if out_root else None
    if source == "chebi20":
        return IngestRequest("chebi20", splits=tuple(splits or ()), out_root=out)
    if source == "moses":
        return IngestRequest("moses", out_root=out)
    if source == "tsv":
        if path is None:
            raise RequestError("--source tsv needs --path FILE")
        if splits and len(splits) > 1:
            raise RequestError("--source tsv takes at most one --split (the label of the file's rows)")
        return IngestRequest("tsv", splits=tuple(splits or ()), path=str(Path(path).resolve()), out_root=out)
    if (cids is None) == (cid_file is None):
        raise RequestError("--source pubchem needs exactly one of --cids or --cid-file")
    tokens = read_cid_file(cid_file) if cid_file else [(token, None) for token in cid_tokens(cids)]
    if not tokens:
        raise RequestError("no CIDs given")
    return IngestRequest("pubchem", cid_tokens=tuple(tokens), out_root=out)


def refresh_request(source: str, params: Params) -> IngestRequest:
    """What the scheduled refresh ingests of a source: ChEBI-20 as configured, PubChem's CIDs from
    refresh.pubchem_cid_file."""
    if source == "pubchem" and params.refresh.pubchem_cid_file is None:
        raise RequestError("refresh.sources has pubchem: set refresh.pubchem_cid_file to the CIDs to refresh")
    if source not in ("chebi20", "pubchem"):
        raise RequestError(f"refresh.sources: unknown source {source!r} (chebi20 | pubchem)")
    return ingest_request(source, cid_file=params.refresh.pubchem_cid_file if source == "pubchem" else None)


def run_ingest(params: Params, request: IngestRequest, *, progress: bool = True) -> IngestSummary:
    out_root = Path(request.out_root) if request.out_root else None
    if request.source == "chebi20":
        return ingest_chebi20(params, request.splits or None, out_root=out_root, progress=progress)
    if request.source == "tsv":
        split = request.splits[0] if request.splits else None
        return ingest_tsv(params, Path(request.path), split=split, out_root=out_root, progress=progress)
    if request.source == "moses":
        return ingest_moses(params, out_root=out_root, progress=progress)
    if request.source == "pubchem":
        return ingest_pubchem(params, list(request.cid_tokens), out_root=out_root, progress=progress)
    raise RequestError(f"unknown source {request.source!r}: expected {', '.join(SOURCES)}")
