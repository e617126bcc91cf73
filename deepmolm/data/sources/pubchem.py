"""PubChem PUG-REST client: properties, descriptions and 3D conformers for batches of CIDs.

A batch is all-or-nothing: its three requests either all succeed (with retries) and the batch yields
its records and rejects, or the batch fails as a whole with the CIDs it concerned. Requests share one
process-wide rate limit per host, whatever the number of threads.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from deepmolm.config import PubChemParams
from deepmolm.data.sources.errors import BatchFetchError
from deepmolm.data.sources.http import (
    RETRYABLE,
    MalformedResponse,
    PermanentHTTPError,
    check_response,
    http_client,
    retrying,
    shared_limiter,
)
from deepmolm.data.sources.records import InputRef, PubChemProperties, RawRecord, Reason, Rejection, smiles_problem
from deepmolm.data.sources.sdf import heavy_atom_coords, split_sdf_records

SOURCE = "pubchem"
PROPERTY_NAMES = (
    "IsomericSMILES",
    "InChIKey",
    "MolecularWeight",
    "ExactMass",
    "XLogP",
    "TPSA",
    "Complexity",
    "HBondDonorCount",
    "HBondAcceptorCount",
)


@dataclass
class BatchResult:
    cids: list[int]
    records: list[RawRecord] = field(default_factory=list)
    rejects: list[Rejection] = field(default_factory=list)
    requests: list[InputRef] = field(default_factory=list)


def _number(value: Any, kind: Callable = float) -> Any:
    # PubChem sends MolecularWeight and ExactMass as strings, the others as numbers.
    if value is None or value == "":
        return None
    try:
        return kind(float(value)) if kind is int else kind(value)
    except (TypeError, ValueError):
        return None


def parse_properties(payload: Any) -> dict[int, dict]:
    """PropertyTable JSON -> CID -> property dict. Raises ValueError on a body of another shape."""
    rows = payload["PropertyTable"]["Properties"]
    if not isinstance(rows, list):
        raise ValueError("PropertyTable.Properties is not a list")
    return {int(row["CID"]): row for row in rows}


def parse_descriptions(payload: Any, preferred_source: str | None) -> dict[int, tuple[str, str | None]]:
    """InformationList JSON -> CID -> (description, source name), the preferred source first."""
    chosen: dict[int, tuple[str, str | None]] = {}
    for item in payload["InformationList"]["Information"]:
        text = item.get("Description")
        if not text:
            continue
        cid = int(item["CID"])
        source = item.get("DescriptionSourceName")
        is_preferred = preferred_source is not None and source == preferred_source
        if cid not in chosen or (is_preferred and chosen[cid][1] != preferred_source):
            chosen[cid] = (text.strip(), source)
    return chosen


def _json_body(extract: Callable[[Any], Any]) -> Callable[[httpx.Response], Any]:
    """A response parser: JSON, then `extract`; a body of the wrong shape is a MalformedResponse."""

    def parse(response: httpx.Response) -> Any:
        url = str(response.request.url)
        try:
            payload = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise MalformedResponse(url, f"malformed JSON: {exc}") from None
        try:
            return extract(payload)
        except (KeyError, TypeError, ValueError) as exc:
            raise MalformedResponse(url, f"unexpected JSON layout: {exc!r}") from None

    return parse


class PubChemClient:
    def __init__(self, params: PubChemParams, http: httpx.Client | None = None):
        self.params = params
        self.base = params.base_url.rstrip("/") + "/pug"
        self.http = http or http_client(params.timeout_s)
        self.host = urlsplit(params.base_url).netloc
        self.limiter = shared_limiter(self.host, params.requests_per_second)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> PubChemClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _request(self, path: str, parse: Callable[[httpx.Response], Any], query: dict | None = None):
        """GET with rate limit and retries; returns (parsed body or None on 404, InputRef)."""
        url = f"{self.base}/{path}"
        p = self.params
        for attempt in retrying(
            max_attempts=p.max_attempts,
            backoff_initial_s=p.backoff_initial_s,
            backoff_max_s=p.backoff_max_s,
            retry_after_max_s=p.retry_after_max_s,
        ):
            with attempt:
                self.limiter.try_acquire(self.host)
                response = self.http.get(url, params=query)
                ref = InputRef(uri=str(response.request.url), sha256=hashlib.sha256(response.content).hexdigest())
                if response.status_code == 404:
                    return None, ref
                check_response(response)
                return parse(response), ref
        raise AssertionError("unreachable: tenacity re-raises the last error")

    def properties(self, cids: list[int]):
        ids = ",".join(map(str, cids))
        return self._request(f"compound/cid/{ids}/property/{','.join(PROPERTY_NAMES)}/JSON", _json_body(parse_properties))

    def descriptions(self, cids: list[int]):
        extract = lambda payload: parse_descriptions(payload, self.params.description_source)  # noqa: E731
        return self._request(f"compound/cid/{','.join(map(str, cids))}/description/JSON", _json_body(extract))

    def conformers(self, cids: list[int]):
        def parse(response: httpx.Response) -> dict[int, str]:
            text = response.text
            if not text.rstrip().endswith("$$$$"):
                raise MalformedResponse(str(response.request.url), "SDF body is cut off (no final $$$$)")
            return split_sdf_records(text)

        return self._request(f"compound/cid/{','.join(map(str, cids))}/SDF", parse, {"record_type": "3d"})

    def fetch_batch(self, cids: list[int], *, max_smiles_chars: int) -> BatchResult:
        """All data for one batch of CIDs, or BatchFetchError naming them."""
        result = BatchResult(cids=list(cids))
        try:
            props, ref = self.properties(cids)
        except PermanentHTTPError as exc:  # 404 is not an error here: it comes back as "no records"
            result.rejects = [_reject(cid, None, Reason.BAD_REQUEST, str(exc)) for cid in cids]
            return result
        except RETRYABLE as exc:
            raise BatchFetchError(cids, exc) from exc
        result.requests.append(ref)
        props = props or {}
        found = [cid for cid in cids if cid in props]
        descriptions: dict[int, tuple[str, str | None]] = {}
        conformers: dict[int, str] = {}
        try:
            if found and self.params.fetch_descriptions:
                body, ref = self.descriptions(found)
                descriptions = body or {}
                result.requests.append(ref)
            if found and self.params.fetch_conformers:
                body, ref = self.conformers(found)
                conformers = body or {}
                result.requests.append(ref)
        except (*RETRYABLE, PermanentHTTPError) as exc:
            raise BatchFetchError(cids, exc) from exc

        for cid in cids:
            row = props.get(cid)
            if row is None:
                result.rejects.append(_reject(cid, None, Reason.NOT_FOUND, "PubChem returned no record for this CID"))
                continue
            smiles = (row.get("SMILES") or row.get("IsomericSMILES") or "").strip()
            if problem := smiles_problem(smiles, max_smiles_chars):
                result.rejects.append(_reject(cid, smiles, *problem))
                continue
            text, text_source = descriptions.get(cid, (None, None))
            coords, status, sdf = None, None, None
            if self.params.fetch_conformers:
                sdf = conformers.get(cid)
                coords, status = heavy_atom_coords(sdf, smiles) if sdf else (None, "no_3d_record")
            result.records.append(
                RawRecord(
                    cid=cid,
                    smiles=smiles,
                    source=SOURCE,
                    source_uri=result.requests[0].uri,
                    description=text,
                    source_sha256=result.requests[0].sha256,
                    inchikey=row.get("InChIKey"),
                    description_source=text_source,
                    pubchem=PubChemProperties(
                        mw=_number(row.get("MolecularWeight")),
                        exact_mass=_number(row.get("ExactMass")),
                        xlogp=_number(row.get("XLogP")),
                        tpsa=_number(row.get("TPSA")),
                        complexity=_number(row.get("Complexity")),
                        hbd=_number(row.get("HBondDonorCount"), int),
                        hba=_number(row.get("HBondAcceptorCount"), int),
                    ),
                    coords=coords,
                    coords_status=status,
                    conformer_sdf=sdf,
                )
            )
        return result


def _reject(cid: int, smiles: str | None, reason: Reason, detail: str) -> Rejection:
    return Rejection(SOURCE, None, str(cid), smiles, None, reason, detail)


def batched(items: Iterable[int], size: int) -> list[list[int]]:
    items = list(items)
    return [items[i : i + size] for i in range(0, len(items), size)]
