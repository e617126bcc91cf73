"""One raw-table row in, one shard record or one rejection out. Never raises for a bad molecule.

A featurizer that says no raises FeaturizeError with a reason code; anything else that goes wrong
inside RDKit, SELFIES or e3fp is caught too and recorded as `featurizer_error` with its message, so
a pathological molecule costs one reject row, never a worker.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from deepmolm.config import FeaturizeParams
from deepmolm.featurize.conformer import make_conformer
from deepmolm.featurize.e3fp_tokens import e3fp_atom_identifiers
from deepmolm.featurize.molecule import parse_molecule
from deepmolm.featurize.outcome import FeaturizeError
from deepmolm.featurize.properties import compute_properties
from deepmolm.featurize.render import render_png
from deepmolm.featurize.selfies_tokens import selfies_with_atom_index

HASHED_INPUT_FIELDS = ("cid", "smiles", "description", "split", "source", "coords", "pubchem")


@dataclass(frozen=True)
class FeaturizeRejection:
    cid: int | None
    source: str | None
    raw_smiles: str | None
    reason: str
    detail: str
    stage: str = "featurize"


def input_hash(row: dict[str, Any]) -> str:
    """Hash of the raw-row fields a record depends on (with the params hash: the cache key)."""
    chosen = {key: row.get(key) for key in HASHED_INPUT_FIELDS}
    return hashlib.sha256(json.dumps(chosen, sort_keys=True, default=str).encode()).hexdigest()


def featurize_row(row: dict[str, Any], params: FeaturizeParams) -> dict[str, Any] | FeaturizeRejection:
    try:
        return _featurize(row, params)
    except FeaturizeError as exc:
        return FeaturizeRejection(row.get("cid"), row.get("source"), row.get("smiles"), exc.reason, exc.detail)
    except Exception as exc:  # noqa: BLE001 - a library failing on one molecule must not stop the rest
        detail = f"{type(exc).__name__}: {exc}"[:300]
        return FeaturizeRejection(row.get("cid"), row.get("source"), row.get("smiles"), "featurizer_error", detail)


def _featurize(row: dict[str, Any], params: FeaturizeParams) -> dict[str, Any]:
    molecule = parse_molecule(row["smiles"])
    flags = list(molecule.flags)
    try:
        selfies, selfies_index = selfies_with_atom_index(molecule.smiles, molecule.mol)
    except FeaturizeError as exc:
        selfies, selfies_index = None, []
        flags.append(f"no_selfies: {exc.detail}"[:120])
    pubchem_coords = None
    if row.get("coords") is not None:
        raw = np.asarray(row["coords"], dtype=float)
        if raw.shape == (len(molecule.input_atom_of), 3):
            pubchem_coords = raw[list(molecule.input_atom_of)]
        else:
            flags.append("pubchem_coords_unusable")
    conformer = make_conformer(molecule.mol, params.conformer, pubchem_coords)
    if conformer.mol is not None:
        coords = conformer.heavy_coords().tolist()
        e3fp = e3fp_atom_identifiers(conformer.mol, params.e3fp).tolist()
    else:
        coords, e3fp = None, None
        flags.append(f"no_conformer: {conformer.detail}"[:120])
    properties = compute_properties(molecule.mol)
    pubchem = row.get("pubchem") or {}
    properties.update({f"pubchem_{key}": value for key, value in pubchem.items()})
    return {
        "cid": row["cid"],
        "source": row["source"],
        "split": row.get("split"),
        "smiles": molecule.smiles,
        "inchikey": molecule.inchikey,
        "selfies": selfies,
        "selfies_atom_index": selfies_index,
        "description": row.get("description"),
        "image_png": render_png(molecule.mol, params.render),
        "conformer_source": conformer.source,
        "coords": coords,
        "e3fp": e3fp,
        "properties": properties,
        "flags": flags,
        "input_hash": input_hash(row),
    }
