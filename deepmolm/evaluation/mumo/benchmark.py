"""The driver side of MuMo: pretrain on a shard version (MOSES's by default), then the property benchmark, each one Ray
Train TorchTrainer run through the same scaling, storage and failure settings as DeepMoLM's stages.

`pretrain` exports `<mumo.models_dir>/pretrained` (safetensors, config, SMILES tokenizer, provenance).
`benchmark` fine-tunes it on every dataset x split x seed of `mumo.finetune` (plus the injection-layer
ablation), fits the random-forest baseline on the same molecules and splits, and writes
`<mumo.reports_dir>/results.json` and `results.md` beside the published MuMo figures.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from deepmolm import __version__
from deepmolm.config import Params
from deepmolm.data.property_sets import PropertySet, property_set_inchikeys, read_property_set
from deepmolm.data.shards.parts import read_manifest, read_shards, resolve_version
from deepmolm.evaluation.mumo.baseline import molecule_features, random_forest
from deepmolm.evaluation.mumo.jobs import benchmark_jobs, held_out_slice, job_splits
from deepmolm.models.mumo.processing import property_molecules, shard_molecules, with_noisy_conformers
from deepmolm.models.mumo.tokenizer import build_smiles_tokenizer
from deepmolm.runtime.run_log import log_run, portable_path
from deepmolm.training.checkpoints import PROVENANCE, RESULTS
from deepmolm.training.driver import SUMMARY, connect, export_model, fit, log_metrics, read_jsonl, read_metric
from deepmolm.training.metrics import regression_errors
from deepmolm.training.mumo.loop import steps_per_epoch

# The MuMo repository's results/ (random split, test RMSE mean and std over its seeds).
PUBLISHED_RANDOM_RMSE = {"esol": (0.536, 0.061), "freesolv": (1.082, 0.088)}
NOISE_SEED = 12345


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _property_sets(params: Params, *, whole: bool = False) -> dict[str, PropertySet]:
    """The sets fine-tuned on (first finetune.max_molecules rows, unless `whole`)."""
    sets = {}
    limit = None if whole else params.mumo.finetune.max_molecules
    for name in params.mumo.finetune.datasets + [params.mumo.ablation.dataset]:
        data = read_property_set(name, params.mumo.property_dir)
        if limit is not None:
            data = PropertySet(data.name, data.unit, data.smiles[:limit], data.targets[:limit], data.rejected)
        sets[name] = data
    return sets


def pretrain(params: Params, *, shards: Path | None = None, out: Path | None = None, progress: bool = False) -> dict:
    import ray

    from deepmolm.training.mumo.loop import pretrain_worker

    version = resolve_version(Path(shards or params.paths.shards_dir / "moses"))
    out = Path(out or params.mumo.models_dir / "pretrained").resolve()
    corpus, rejected = shard_molecules(version)
    molecules, held_out = held_out_slice(corpus, params.mumo.pretrain.holdout_molecules, params.train.seed)
    evaluated = property_set_inchikeys(dict.fromkeys([*params.mumo.finetune.datasets, params.mumo.ablation.dataset]),
                                       params.mumo.property_dir)
    overlap = sum(key in evaluated for key in read_shards(version, ["inchikey"]).column("inchikey").to_pylist())
    vocabulary = [m.smiles for m in corpus] + [s for data in _property_sets(params, whole=True).values() for s in data.smiles]
    tokenizer = build_smiles_tokenizer(vocabulary)
    run = params.mumo.pretrain
    total = run.max_steps or run.epochs * steps_per_epoch(len(molecules), run.batch_size)
    trained = params.sections("mumo.presets", "mumo.injection_layer", "mumo.max_length", "mumo.pretrain",
                              "mumo.finetune.datasets", "mumo.ablation.dataset", "train.seed")
    del trained["mumo.pretrain"]["holdout_every_steps"]  # how often it is measured: the same run, resumable
    name = "mumo-pretrain-" + _digest(trained, params.mumo.preset,
                                      read_manifest(version)["version"], len(tokenizer), __version__)
    plan = {"run": name, "total_steps": total, "shards": portable_path(version)}
    started = time.perf_counter()
    connect(params)
    result = fit(params, pretrain_worker, {"params": params, "plan": plan, "tokenizer": tokenizer,
                                           "molecules": ray.put(molecules), "held_out": ray.put(held_out)}, name)
    history, state = export_model(result, out)
    summary = {"run": name, "model": portable_path(out), "shards": plan["shards"], "molecules": len(molecules),
               "held_out": len(held_out), "rejected_by_reason": rejected, "benchmark_molecules": overlap,
               "vocab_size": len(tokenizer), "steps": total, "first_loss": history[0]["loss"],
               "last_loss": history[-1]["loss"], "holdout_loss_before": state.get("before"),
               # the last epoch ends at the last step, so its held-out loss is the one after training
               "holdout_loss_after": (state.get("epochs") or [{}])[-1].get("holdout_loss")}
    log_metrics(params.mumo.reports_dir / "pretrain", history, summary,  # samples/s is the machine's: the run log's
                epochs=state.get("epochs", []), held_out=state.get("holdout", []))
    seconds = round(time.perf_counter() - started, 1)
    log_run(params.paths.logs_dir, "mumo_pretrain", out, run=name, seconds=seconds,
            samples_per_s=[round(row["samples_per_s"], 1) for row in history if "samples_per_s" in row])
    return {**summary, "seconds": seconds}


def benchmark(params: Params, *, pretrained: Path | None = None, progress: bool = False) -> dict:
    import ray

    from deepmolm.training.mumo.loop import finetune_worker

    pretrained = Path(pretrained or params.mumo.models_dir / "pretrained").resolve()
    if not (pretrained / "config.json").is_file():
        raise FileNotFoundError(f"no pretrained MuMo at {pretrained} (run `deepmolm mumo pretrain`)")
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(pretrained))
    jobs = benchmark_jobs(params)
    started = time.perf_counter()
    data, accounting = {}, {}
    for name, dataset in _property_sets(params).items():
        molecules, rejected = property_molecules(dataset, params.featurize.conformer, progress=progress)
        usable = [m for m in molecules if m is not None]
        noisy_all = {}
        for sigma in params.mumo.ablation.coordinate_noise:
            shaken = iter(with_noisy_conformers(usable, sigma, NOISE_SEED))
            noisy_all[sigma] = [None if m is None else next(shaken) for m in molecules]
        wanted = [j for j in jobs if j["dataset"] == name]
        data[name] = {"molecules": molecules, "noisy": noisy_all,
                      "splits": job_splits(dataset.smiles, wanted)}
        accounting[name] = {"rows": dataset.rows, "molecules": len(dataset.smiles), "with_conformer": len(usable),
                            "rejected_rows": len(dataset.rejected), "rejected_by_reason": rejected}
    prepare_s = time.perf_counter() - started
    provenance = json.loads((pretrained / PROVENANCE).read_text())
    name = "mumo-benchmark-" + _digest(params.sections("mumo.finetune", "mumo.ablation", "mumo.max_length", "train.seed"),
                                       provenance["run"], jobs, __version__)
    connect(params)
    result = fit(params, finetune_worker, {"params": params, "jobs": jobs, "tokenizer": tokenizer,
                                           "pretrained": str(pretrained), "data": ray.put(data)}, name)
    with result.checkpoint.as_directory() as directory:
        runs = read_jsonl(Path(directory) / RESULTS)
    baseline = _baselines(params, data, jobs)
    pretraining = pretraining_figures(params.mumo.reports_dir / "pretrain")
    report = {
        "pretrained": provenance, "pretraining": pretraining, "run": name, "preset": params.mumo.preset, "injection_layer": params.mumo.injection_layer,
        "datasets": accounting, "runs": [{k: v for k, v in r.items() if k != "seconds"} for r in runs],
        "baseline": baseline, "table": results_table(params, runs, baseline), "published_random_rmse": PUBLISHED_RANDOM_RMSE,
    }
    seconds = {"prepare": round(prepare_s, 1), "total": round(time.perf_counter() - started, 1),
               "runs": {r["name"]: r["seconds"] for r in runs}}
    log_run(params.paths.logs_dir, "mumo_benchmark", params.mumo.reports_dir, run=name, seconds=seconds)
    out = params.mumo.reports_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "results.md").write_text(results_markdown(report))
    plot_results(report, out / "results.png", pretraining_curves(params.mumo.reports_dir / "pretrain", pretraining))
    return {"runs": len(runs), "out": str(out), "table": report["table"], "seconds": seconds}


def _baselines(params: Params, data: dict, jobs: list[dict]) -> list[dict]:
    """The random forest on the same molecules (those with a conformer) and splits as MuMo's runs."""
    out = []
    for name, sets in data.items():
        keep = [i for i, m in enumerate(sets["molecules"]) if m is not None]
        smiles = {i: sets["molecules"][i].smiles for i in keep}
        targets = {i: sets["molecules"][i].target for i in keep}
        features = dict(zip(keep, molecule_features([smiles[i] for i in keep]), strict=True))
        for key, split in sets["splits"].items():
            kind, seed = key.split("/")
            part = {p: [i for i in split[p] if i in features] for p in ("train", "test")}
            forest = random_forest(np.stack([features[i] for i in part["train"]]), np.array([targets[i] for i in part["train"]]),
                                   int(seed), trees=params.mumo.baseline_trees, workers=2)
            truth = np.array([targets[i] for i in part["test"]])
            out.append({"dataset": name, "split": kind, "seed": int(seed),
                        "test": regression_errors(truth, forest.predict(np.stack([features[i] for i in part["test"]])))})
    return out


def _mean_std(values: list[float]) -> list[float] | None:
    return [round(float(np.mean(values)), 3), round(float(np.std(values)), 3)] if values else None


def results_table(params: Params, runs: list[dict], baseline: list[dict]) -> list[dict]:
    """One row per dataset x split at mumo.injection_layer, then one per ablation layer."""
    rows = []
    layer = params.mumo.injection_layer
    keys = sorted({(r["dataset"], r["split"], r["injection_layer"]) for r in runs},
                  key=lambda k: (k[2] != layer, k[0], k[1], k[2]))
    for dataset, split, injected in keys:
        chosen = [r for r in runs if (r["dataset"], r["split"], r["injection_layer"]) == (dataset, split, injected)]
        forest = [b for b in baseline if (b["dataset"], b["split"]) == (dataset, split)
                  and b["seed"] in {r["seed"] for r in chosen}]
        row = {"dataset": dataset, "split": split, "injection_layer": injected, "seeds": sorted(r["seed"] for r in chosen),
               "mumo_rmse": _mean_std([r["test"]["rmse"] for r in chosen]),
               "mumo_mae": _mean_std([r["test"]["mae"] for r in chosen]),
               # the score fine-tuning choices are made on: the best epoch's, never the test's
               "mumo_valid_rmse": _mean_std([r["valid_rmse"] for r in chosen if np.isfinite(r.get("valid_rmse", np.nan))]),
               "rf_rmse": _mean_std([b["test"]["rmse"] for b in forest]),
               "rf_mae": _mean_std([b["test"]["mae"] for b in forest]),
               "published_rmse": list(PUBLISHED_RANDOM_RMSE[dataset]) if split == "random" else None,
               "test_molecules": chosen[0]["sizes"]["test"]}
        for sigma in params.mumo.ablation.coordinate_noise:
            row[f"mumo_rmse_noise_{sigma}"] = _mean_std([r[f"test_noise_{sigma}"]["rmse"] for r in chosen if f"test_noise_{sigma}" in r])
        rows.append(row)
    return rows


def _pm(value: list[float] | None) -> str:
    return "–" if value is None else f"{value[0]:.3f} ± {value[1]:.3f}"


def results_markdown(report: dict) -> str:
    noise = [key.removeprefix("mumo_rmse_noise_") for key in (report["table"][0] if report["table"] else {})
             if key.startswith("mumo_rmse_noise_")]
    pretrained, held = report["pretrained"], report.get("pretraining") or {}
    corpus = f" of `{pretrained['shards']}`" if pretrained.get("shards") else ""
    held_out = (f"; held-out MLM loss {held['holdout_loss_before']} before, {held['holdout_loss_after']} after, on "
                f"{held['held_out']} molecules" if held.get("holdout_loss_after") is not None else "")
    lines = [f"MuMo preset `{report['preset']}`, pretrained on {pretrained['molecules']} molecules{corpus} "
             f"({pretrained['steps']} steps{held_out}); test RMSE and MAE, mean ± std over seeds.", "",
             "| dataset | split | injection layer | seeds | MuMo RMSE | MuMo MAE | RF RMSE | RF MAE | published MuMo RMSE | "
             + "".join(f"MuMo RMSE, noise {s} Å | " for s in noise) + "MuMo validation RMSE |",
             "| --- " * (10 + len(noise)) + "|"]
    for row in report["table"]:
        lines.append(f"| {row['dataset']} | {row['split']} | {row['injection_layer']} | {len(row['seeds'])} | "
                     f"{_pm(row['mumo_rmse'])} | {_pm(row['mumo_mae'])} | {_pm(row['rf_rmse'])} | {_pm(row['rf_mae'])} | "
                     f"{_pm(row['published_rmse'])} | " + "".join(f"{_pm(row[f'mumo_rmse_noise_{s}'])} | " for s in noise)
                     + f"{_pm(row.get('mumo_valid_rmse'))} |")
    return "\n".join(lines) + "\n"


def pretraining_figures(directory: Path) -> dict | None:
    """The pretraining's held-out MLM loss before and after, from the mumo_pretrain stage's metrics."""
    path = Path(directory) / SUMMARY
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    return {key: summary.get(key) for key in ("molecules", "held_out", "steps", "holdout_loss_before", "holdout_loss_after")}


def pretraining_curves(directory: Path, figures: dict | None) -> dict[str, list[tuple[int, float]]]:
    """The MLM loss per step, and the held-out loss from before the first step (step 0, from
    `figures`) to the end (each epoch's end, and every mumo.pretrain.holdout_every_steps)."""
    before = (figures or {}).get("holdout_loss_before")
    start = [(0, before)] if before is not None else []
    return {"training": read_metric(directory, "train/loss"), "held out": start + read_metric(directory, "holdout/loss")}


def plot_results(report: dict, path: Path, pretraining: dict[str, list[tuple[int, float]]] | None = None) -> None:
    """Left: the pretraining's MLM loss per step and its held-out loss per epoch. Middle: validation
    RMSE per epoch of every fine-tuning run at the default injection layer. Right: test RMSE (mean
    over seeds) as the test conformers get noisier, per dataset and split, the forest dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (mlm, curves, noise) = plt.subplots(1, 3, figsize=(17, 4.2))
    for (label, points), style in zip((pretraining or {}).items(), ("-", "o-"), strict=False):
        if points:
            mlm.plot(*zip(*points, strict=True), style, label=label, alpha=0.8)
    mlm.set(xlabel="step", ylabel="MLM loss per masked token", title="pretraining")
    if mlm.has_data():
        mlm.legend(fontsize=8)
    colours = {}
    for run in report["runs"]:
        if run["injection_layer"] != report["injection_layer"]:
            continue
        key = f"{run['dataset']} {run['split']}"
        first = key not in colours
        colour = colours.setdefault(key, f"C{len(colours)}")
        curves.plot([row["epoch"] + 1 for row in run["curve"]], [row["valid_rmse"] for row in run["curve"]],
                    color=colour, alpha=0.8, label=key if first else None)
    curves.set(xlabel="epoch", ylabel="validation RMSE", title="fine-tuning (one line per seed)", yscale="log")
    curves.legend(fontsize=8)
    for row in report["table"]:
        if row["injection_layer"] != report["injection_layer"]:
            continue
        key = f"{row['dataset']} {row['split']}"
        sigmas = [0.0] + [float(k.removeprefix("mumo_rmse_noise_")) for k in row if k.startswith("mumo_rmse_noise_")]
        values = [row["mumo_rmse"][0]] + [row[k][0] for k in row if k.startswith("mumo_rmse_noise_")]
        noise.plot(sigmas, values, marker="o", color=colours.get(key, "k"), label=f"MuMo, {key}")
        if row["rf_rmse"]:
            noise.axhline(row["rf_rmse"][0], color=colours.get(key, "k"), linestyle="--", linewidth=0.8)
    noise.set(xlabel="noise on test coordinates (Å, per coordinate)", ylabel="test RMSE",
              title="robustness (dashed: random forest, no geometry)")
    noise.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
