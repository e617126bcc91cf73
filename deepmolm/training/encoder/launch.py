"""The driver side of encoder pretraining: the corpus, one Ray Train run (resumable by its name), the
exported encoder in <train.models_dir>/encoder (safetensors in the model's own keys, loaded by
`train.init.encoder`), and its metrics (held-out counts before and after) through dvclive."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

from deepmolm import __version__
from deepmolm.config import Params
from deepmolm.data.shards.parts import read_manifest, read_shards, resolve_version
from deepmolm.runtime.run_log import log_run, portable_path
from deepmolm.training.driver import connect, export_model, fit, log_metrics
from deepmolm.training.encoder.corpus import SHARD_COLUMNS, build_corpus

METRICS_DIR = Path("train") / "encoder"  # under paths.reports_dir


def _code_digest() -> str:
    """Of the code that draws, counts and learns: a changed encoder or drawing starts a new run."""
    from deepmolm.models.deepmolm import deep_encoder, processing

    digest = hashlib.sha256()
    for path in [*sorted(Path(__file__).parent.glob("*.py")), Path(deep_encoder.__file__), Path(processing.__file__)]:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def pretrain_encoder(params: Params, *, shards: Path | None = None, out: Path | None = None,
                     if_used: bool = False) -> dict:
    """With `if_used`, only when `train.init.encoder` is `out` (the recipe starts stage 1 from it);
    otherwise `out` gets a note saying why nothing was trained (a DVC stage must leave its outputs)."""
    run = params.train.encoder_pretrain
    out = Path(out or params.train.models_dir / "encoder").resolve()
    if if_used and (params.train.init.encoder is None or Path(params.train.init.encoder).resolve() != out):
        return _not_used(params, out)  # (before the model's libraries load: the CPU recipe's every `dvc repro`)
    import ray

    from deepmolm.models.deepmolm.presets import model_config
    from deepmolm.training.encoder.loop import pretrain_worker
    from deepmolm.training.mumo.loop import steps_per_epoch

    version = resolve_version(Path(shards or params.paths.shards_dir / "chebi20"))
    corpus = build_corpus(read_shards(version, SHARD_COLUMNS).to_pylist(), train_splits=params.train.splits,
                          eval_splits=list(params.eval.splits), holdout_fraction=params.train.holdout.fraction,
                          holdout_seed=params.train.holdout.seed,
                          use_train_split=run.train_split_molecules, extra_file=run.molecules_file,
                          extra_molecules=run.file_molecules, corpus_holdout=run.holdout_molecules,
                          seed=params.train.seed)
    if not corpus.train:
        raise ValueError("train.encoder_pretrain: no molecule to pretrain on (every row was left out: "
                         f"{json.dumps(corpus.counts)})")
    spec = model_config(params).encoder_spec()
    spec_fields = {name: getattr(spec, name) for name in spec.__dataclass_fields__}
    total = run.epochs * steps_per_epoch(len(corpus.train), run.batch_size)
    name = "encoder-pretrain-" + hashlib.sha256(json.dumps(
        [params.sections("train.encoder_pretrain", "train.seed", "train.holdout", "train.splits", "eval.splits",
                         "train.scaling", "train.max_grad_norm", "train.adam_betas", "train.adam_eps"),
         spec_fields, read_manifest(version)["version"], __version__, _code_digest()],
        sort_keys=True, default=str).encode()).hexdigest()[:12]
    plan = {"run": name, "total_steps": total, "shards": portable_path(version), "spec": spec_fields}
    started = time.perf_counter()
    connect(params)
    result = fit(params, pretrain_worker, {"params": params, "plan": plan, "corpus": ray.put(corpus)}, name)
    history, state = export_model(result, out)
    summary = {"run": name, "model": portable_path(out), "shards": plan["shards"], "steps": total,
               "molecules": len(corpus.train), "held_out": len(corpus.holdout), "corpus": corpus.counts,
               "held_out_before": state.get("before"), "held_out_after": state.get("after")}
    log_metrics(params.paths.reports_dir / METRICS_DIR, history, summary)
    seconds = round(time.perf_counter() - started, 1)
    log_run(params.paths.logs_dir, "pretrain_encoder", out, run=name, seconds=seconds,
            samples_per_s=[round(row["samples_per_s"], 1) for row in history if "samples_per_s" in row])
    return {**summary, "seconds": seconds}


NOT_USED = "NOT_USED.json"


def _not_used(params: Params, out: Path) -> dict:
    reason = (f"recipe {params.recipe!r} does not start stage 1 from {portable_path(out)} "
              f"(train.init.encoder is {portable_path(params.train.init.encoder) if params.train.init.encoder else None})")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / NOT_USED).write_text(json.dumps({"reason": reason}, indent=2) + "\n")
    summary = {"skipped": True, "reason": reason, "model": portable_path(out), "steps": 0, "molecules": 0,
               "held_out_before": None, "held_out_after": None}
    log_metrics(params.paths.reports_dir / METRICS_DIR, [], summary)
    return summary
