"""The random-forest baseline of MuMo's results table, ahead of the model: ESOL and FreeSolv, random
and scaffold 80/10/10 splits, 3 seeds; test RMSE and MAE as mean +/- std, beside predicting the
training mean (the floor any model must clear) and the published MuMo figures on the random split.

`python -m benchmarks.mumo_baseline [--trees 500] [--workers 2]`
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from deepmolm.mumo.baseline import molecule_features, random_forest, regression_errors
from deepmolm.mumo.datasets import random_split, read_property_set, scaffold_split

SHARED = Path(os.environ.get("DEEPMOLM_SHARED", Path(__file__).resolve().parents[2] / "shared")).resolve()
PUBLISHED_MUMO_RANDOM_RMSE = {"esol": (0.536, 0.061), "freesolv": (1.082, 0.088)}  # MuMo repository, results/


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for name in ("esol", "freesolv"):
        data = read_property_set(name, SHARED / "data" / "moleculenet")
        started = time.perf_counter()
        features = molecule_features(data.smiles)
        featurize_s = time.perf_counter() - started
        for kind in ("random", "scaffold"):
            forest, floor, fit_s = [], [], []
            for seed in range(args.seeds):
                parts = random_split(len(data.smiles), seed) if kind == "random" else scaffold_split(data.smiles, seed)
                started = time.perf_counter()
                model = random_forest(features[parts["train"]], data.targets[parts["train"]], seed,
                                      trees=args.trees, workers=args.workers)
                fit_s.append(time.perf_counter() - started)
                truth = data.targets[parts["test"]]
                forest.append(regression_errors(truth, model.predict(features[parts["test"]])))
                floor.append(regression_errors(truth, np.full(len(truth), data.targets[parts["train"]].mean())))
            row = {"dataset": name, "split": kind, "molecules": len(data.smiles), "seeds": args.seeds,
                   "rf_rmse": [round(float(np.mean([e["rmse"] for e in forest])), 3), round(float(np.std([e["rmse"] for e in forest])), 3)],
                   "rf_mae": [round(float(np.mean([e["mae"] for e in forest])), 3), round(float(np.std([e["mae"] for e in forest])), 3)],
                   "mean_predictor_rmse": round(float(np.mean([e["rmse"] for e in floor])), 3),
                   "published_mumo_rmse": PUBLISHED_MUMO_RANDOM_RMSE[name] if kind == "random" else None,
                   "featurize_s": round(featurize_s, 1), "fit_s_per_seed": round(float(np.mean(fit_s)), 1)}
            rows.append(row)
            print(json.dumps(row))


if __name__ == "__main__":
    main()
