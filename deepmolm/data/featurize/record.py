"""One raw-table row in, one shard record or one rejection out. Never raises for a bad molecule.

A featurizer that says no raises FeaturizeError with a reason code; anything else that goes wrong
inside RDKit, SELFIES or e3fp is caught too and recorded as `featurizer_error` with its message, so
a pathological molecule costs one reject row, never a worker.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from rdkit import Chem

from deepmolm.config import ConformerParams, FeaturizeParams
from deepmolm.data.featurize.conformer import Conformer, flat_conformer, make_conformer
from deepmolm.data.featurize.e3fp_tokens import e3fp_atom_identifiers
from deepmolm.data.featurize.molecule import parse_molecule
from deepmolm.data.featurize.outcome import FeaturizeError
from deepmolm.data.featurize.properties import compute_properties
from deepmolm.data.featurize.render import render_png
from deepmolm.data.featurize.selfies_tokens import selfies_with_atom_index

# Bump when featurize_row writes other values for the same input and params (a fix, a new column):
# it keys the featurization cache and the shard version id, so old output is never reused.
# 2: selfies_atom_index counts heavy atoms only (was RDKit's atom index, off after [2H] or [H+]).
FEATURIZER_VERSION = 2

HASHED_INPUT_FIELDS = ("cid", "smiles", "description", "split", "source", "coords", "pubchem")


@dataclass(frozen=True)
class FeaturizeRejection:
    cid: int | None
    source: str | None
    raw_smiles: str | None
    reason: str
    detail: str
    input_hash: str
    stage: str = "featurize"


def input_hash(row: dict[str, Any]) -> str:
    """Hash of the raw-row fields a record depends on (with the params hash: the cache key)."""
    chosen = {key: row.get(key) for key in HASHED_INPUT_FIELDS}
    return hashlib.sha256(json.dumps(chosen, sort_keys=True, default=str).encode()).hexdigest()


ConformerFn = Callable[[Chem.Mol, ConformerParams, "np.ndarray | None"], Conformer]


class StepTimer:
    """Seconds spent per featurization step, summed over the molecules it has seen."""

    def __init__(self) -> None:
        self.seconds: Counter[str] = Counter()

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - started


def featurize_row(
    row: dict[str, Any],
    params: FeaturizeParams,
    *,
    conformer_fn: ConformerFn = make_conformer,
    timer: StepTimer | None = None,
) -> dict[str, Any] | FeaturizeRejection:
    """`conformer_fn` replaces the conformer step: sandbox.py passes one that gives up when the
    molecule ran past its time limit, so the rest of the record is still made."""
    timer = timer or StepTimer()
    key = input_hash(row)
    try:
        return _featurize(row, params, conformer_fn, timer, key)
    except FeaturizeError as exc:
        reason, detail = exc.reason, exc.detail
    except Exception as exc:  # noqa: BLE001 - a library failing on one molecule must not stop the rest
        reason, detail = "featurizer_error", f"{type(exc).__name__}: {exc}"[:300]
    return FeaturizeRejection(row.get("cid"), row.get("source"), row.get("smiles"), reason, detail, key)


def _featurize(
    row: dict[str, Any], params: FeaturizeParams, conformer_fn: ConformerFn, timer: StepTimer, key: str
) -> dict[str, Any]:
    with timer.step("molecule"):
        molecule = parse_molecule(row["smiles"])
    flags, notes = list(molecule.flags), []
    with timer.step("selfies"):
        try:
            selfies, selfies_index = selfies_with_atom_index(molecule.smiles, molecule.mol)
        except FeaturizeError as exc:
            selfies, selfies_index = None, []
            flags.append("no_selfies")
            notes.append(f"selfies: {exc.detail}")
    pubchem_coords = None
    if row.get("coords") is not None:
        raw = np.asarray(row["coords"], dtype=float)
        if raw.shape == (len(molecule.input_atom_of), 3):
            pubchem_coords = raw[list(molecule.input_atom_of)]
        else:
            flags.append("pubchem_coords_unusable")
            notes.append(f"pubchem coords of shape {raw.shape} for {len(molecule.input_atom_of)} atoms")
    with timer.step("conformer"):
        conformer = conformer_fn(molecule.mol, params.conformer, pubchem_coords)
        if conformer.mol is None and params.conformer.flat_fallback and params.conformer.method != "none":
            flags.append("flat_conformer")
            notes.append(f"conformer: {conformer.detail}")
            conformer = flat_conformer(molecule.mol)
    views = params.views_for(row["source"])
    if conformer.mol is not None:
        coords, e3fp = conformer.heavy_coords().tolist(), None
        if "e3fp" in views:
            with timer.step("e3fp"):
                e3fp = e3fp_atom_identifiers(conformer.mol, params.e3fp).tolist()
    else:
        coords, e3fp = None, None
        flags.append("no_conformer")
        notes.append(f"conformer: {conformer.detail}")
    with timer.step("properties"):
        properties = compute_properties(molecule.mol)
    pubchem = row.get("pubchem") or {}
    properties.update({f"pubchem_{key}": value for key, value in pubchem.items()})
    image = None
    if "drawing" in views:
        with timer.step("render"):
            image = render_png(molecule.mol, params.render)
    return {
        "cid": row["cid"],
        "source": row["source"],
        "split": row.get("split"),
        "smiles": molecule.smiles,
        "inchikey": molecule.inchikey,
        "selfies": selfies,
        "selfies_atom_index": selfies_index,
        "description": row.get("description"),
        "image_png": image,
        "conformer_source": conformer.source,
        "coords": coords,
        "e3fp": e3fp,
        "properties": properties,
        "flags": flags,
        "notes": "; ".join(notes)[:500] or None,
        "input_hash": key,
    }
