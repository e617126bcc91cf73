"""MuMo's molecules: a SMILES, its unified graph and, for property sets, a target.

Pretraining reads a shard version's SFP table (the featurize flow wrote it; MOSES's by default); the property
sets get a conformer here with the featurizer's own ETKDG + MMFF settings. A molecule without a
conformer is a counted rejection, never a silent drop. Coordinates are kept for property molecules
so the test-time noise ablation can rebuild their graphs from perturbed conformers.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
from rdkit import Chem

from deepmolm.config import ConformerParams
from deepmolm.data.featurize.conformer import make_conformer
from deepmolm.data.featurize.outcome import FeaturizeError
from deepmolm.data.featurize.sfp import StructuredGraph, heavy_atoms, structured_graph
from deepmolm.data.property_sets import PropertySet
from deepmolm.data.shards.parts import read_shards
from deepmolm.data.shards.sfp_table import read_sfp, row_graph
from deepmolm.models.mumo.modeling import collate_graphs
from deepmolm.runtime.progress import progress_bar


@dataclass(frozen=True)
class Molecule:
    smiles: str
    graph: StructuredGraph
    target: float = float("nan")
    coords: np.ndarray | None = None  # heavy atoms, in the order of Chem.MolFromSmiles(smiles)


def shard_molecules(version_dir) -> tuple[list[Molecule], dict[str, int]]:
    """Every molecule of a shard version with a graph, and the SFP table's rejections by reason."""
    graphs, rejects = read_sfp(version_dir)
    shards = read_shards(version_dir, ["cid", "smiles"])
    smiles = dict(zip(shards.column("cid").to_pylist(), shards.column("smiles").to_pylist(), strict=True))
    molecules = [Molecule(smiles[row["cid"]], row_graph(row)) for row in graphs.to_pylist()]
    return molecules, dict(Counter(rejects.column("reason").to_pylist()))


def property_molecules(dataset: PropertySet, conformer: ConformerParams, *, progress: bool = False
                       ) -> tuple[list[Molecule | None], dict[str, int]]:
    """One entry per molecule of the set (None where no conformer could be made), so the set's split
    indices still apply; and the rejections by reason."""
    molecules: list[Molecule | None] = []
    rejected: Counter = Counter()
    with progress_bar(f"conformers {dataset.name}", len(dataset.smiles), enabled=progress) as advance:
        for text, target in zip(dataset.smiles, dataset.targets, strict=True):
            mol = heavy_atoms(Chem.MolFromSmiles(text))
            made = make_conformer(mol, conformer)
            try:
                coords = made.heavy_coords()
                molecules.append(Molecule(text, structured_graph(mol, coords), float(target), coords))
            except FeaturizeError as exc:
                molecules.append(None)
                rejected[exc.reason] += 1
            advance(1)
    return molecules, dict(rejected)


def with_noisy_conformers(molecules: list[Molecule], sigma: float, seed: int) -> list[Molecule]:
    """The same molecules, graphs rebuilt after Gaussian noise of `sigma` angstrom on every coordinate."""
    rng = np.random.default_rng(seed)
    noisy = []
    for molecule in molecules:
        coords = molecule.coords + rng.normal(0.0, sigma, molecule.coords.shape)
        graph = structured_graph(heavy_atoms(Chem.MolFromSmiles(molecule.smiles)), coords)
        noisy.append(Molecule(molecule.smiles, graph, molecule.target, coords))
    return noisy


def model_inputs(tokenizer, molecules: list[Molecule], max_length: int) -> dict:
    encoded = tokenizer([m.smiles for m in molecules], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
            "graph": collate_graphs([m.graph for m in molecules])}


def mask_tokens(inputs: dict, tokenizer, ratio: float, generator: torch.Generator) -> dict:
    """BERT's masking over SMILES tokens (never padding or the global token): of the chosen ones, 80%
    become [MASK], 10% a random token, 10% stay; labels are -100 elsewhere. At least one per molecule."""
    ids = inputs["input_ids"]
    maskable = inputs["attention_mask"].bool() & (ids != tokenizer.convert_tokens_to_ids("[GLOBAL]"))
    scores = torch.rand(ids.shape, generator=generator).masked_fill(~maskable, 2.0)
    chosen = (scores < ratio) & maskable
    first = scores.argmin(dim=1)  # the lowest score of each row is a maskable token
    chosen[torch.arange(len(ids)), first] = True
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    roll = torch.rand(ids.shape, generator=generator)
    special = len(tokenizer.all_special_ids)
    random_ids = torch.randint(special, len(tokenizer), ids.shape, generator=generator)
    masked = torch.where(chosen & (roll < 0.8), torch.full_like(ids, tokenizer.mask_token_id), ids)
    masked = torch.where(chosen & (roll >= 0.8) & (roll < 0.9), random_ids, masked)
    return {**inputs, "input_ids": masked, "labels": labels}
