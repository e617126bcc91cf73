"""The MuMo benchmark's runs and the splits they read, and the pretraining corpus's held-out slice:
pure functions of params and SMILES, importable without the model's libraries."""

from __future__ import annotations

import numpy as np

from deepmolm.config import Params
from deepmolm.data.property_sets import random_split, scaffold_split


def held_out_slice(corpus: list, count: int, seed: int) -> tuple[list, list]:
    """(training molecules, `count` held-out ones): a seeded choice, each part in corpus order."""
    if count >= len(corpus):
        raise ValueError(f"mumo.pretrain.holdout_molecules ({count}) leaves nothing of the {len(corpus)} molecules to "
                         "pretrain on: hold out fewer, or build a larger corpus (sources.moses.max_rows)")
    chosen = set(np.random.default_rng(seed).choice(len(corpus), count, replace=False).tolist())
    return [m for i, m in enumerate(corpus) if i not in chosen], [m for i, m in enumerate(corpus) if i in chosen]


def benchmark_jobs(params: Params) -> list[dict]:
    """Every fine-tuning run: the grid at mumo.injection_layer, then the ablation's other layers."""
    run, ablation, layer = params.mumo.finetune, params.mumo.ablation, params.mumo.injection_layer
    jobs = [{"dataset": d, "split": s, "seed": seed, "injection_layer": layer}
            for d in run.datasets for s in run.splits for seed in run.seeds]
    jobs += [{"dataset": ablation.dataset, "split": ablation.split, "seed": seed, "injection_layer": other}
             for other in ablation.injection_layers if other != layer for seed in ablation.seeds]
    return [{**job, "name": f"{job['dataset']}/{job['split']}/seed{job['seed']}/layer{job['injection_layer']}"} for job in jobs]


def job_splits(smiles: list[str], jobs: list[dict]) -> dict[str, dict[str, list[int]]]:
    """Each `split/seed` the jobs use, in the jobs' order: the baseline is reported in this order, and a
    set of split names iterates in the order of that process's string hashes (PYTHONHASHSEED), which
    reordered results.json between two runs of the same benchmark."""
    out = {}
    for kind, seed in dict.fromkeys((job["split"], job["seed"]) for job in jobs):
        parts = random_split(len(smiles), seed) if kind == "random" else scaffold_split(smiles, seed)
        out[f"{kind}/{seed}"] = {name: [int(i) for i in indices] for name, indices in parts.items()}
    return out
