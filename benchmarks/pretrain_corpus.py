"""MuMo's pretraining corpus from MOSES, stage by stage (issue 44).

`python -m benchmarks.pretrain_corpus --rows 20000 [--project DIR]` runs, in a project directory
(default: this checkout), the commands of DVC's stages `ingest_moses`, `featurize_moses` and
`validate_moses` for the first N rows of MOSES's file, each in its own process with the outputs
where params.yaml puts them, and prints per stage: wall seconds, seconds per 1,000 molecules, the
CPU seconds of the process and every process it waited for (Dask's workers included), and the peak
summed RSS of its process tree (sampled every 0.2 s). Run it again with a larger N: the ingest is
read again (seconds), featurize reuses every molecule the smaller corpus built, and an interrupted
featurization resumes part by part. `--stages ... pretrain` measures the `mumo_pretrain` stage's
command on that corpus too (with `-S` overrides; its Ray Train run in the stage's runs directory, so a
`dvc exp run` of the same params afterwards resumes it at its end). Each stage's figures are appended
to <project>/logs/pretrain_corpus.jsonl with the processor's name.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
from pathlib import Path

from benchmarks.scale import measured
from deepmolm.runtime.run_log import processor

REPO = Path(__file__).resolve().parents[1]


STAGES = ("ingest", "featurize", "validate", "pretrain")


def stage_commands(rows: int, overrides: list[str] = ()) -> list[tuple[str, list[str]]]:
    deepmolm = str(Path(sys.executable).with_name("deepmolm"))
    size = ["-S", f"sources.moses.max_rows={rows}", *(arg for override in overrides for arg in ("-S", override))]
    return [("ingest", [deepmolm, "data", "ingest", "--source", "moses", "--quiet", "--json", *size]),
            ("featurize", [deepmolm, "data", "featurize", "--input", "data/raw/moses", "--quiet", "--json", *size]),
            ("validate", [deepmolm, "data", "validate", "--shards", "data/shards/moses", "--quiet", "--json",
                          "-S", "paths.reports_dir=reports/moses", *size]),
            ("pretrain", [deepmolm, "mumo", "pretrain", "--shards", "data/shards/moses", "--quiet", "--json",
                          "-S", "train.runs_dir=runs/mumo_pretrain", *size])]  # dvc.yaml's runs directory


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, required=True, help="sources.moses.max_rows: the corpus size")
    parser.add_argument("--project", type=Path, default=REPO, help="the project directory the stages run in")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES[:3]))
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a params.yaml override for every stage (e.g. mumo.pretrain.epochs=1)")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(args.project)}
    log = args.project / "logs" / "pretrain_corpus.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"{'stage':<10} {'wall s':>8} {'s/1k mol':>9} {'CPU s':>9} {'peak RSS MB':>12}  summary")
    for stage, command in stage_commands(args.rows, args.overrides):
        if stage not in args.stages:
            continue
        before = children_cpu_s()
        result = measured(command, args.project, env)
        cpu = round(children_cpu_s() - before, 1)
        summary = result["summary"] or {}
        molecules = (summary.get("input_rows") or summary.get("tables", {}).get("molecule_shards", {}).get("rows")
                     or summary.get("molecules") or args.rows)
        row = {"rows": args.rows, "stage": stage, "overrides": args.overrides, "seconds": result["seconds"], "cpu_s": cpu,
               "peak_rss_mb": result["peak_rss_mb"], "molecules": molecules, "processor": processor(),
               "summary": {k: v for k, v in summary.items() if k in ("input_rows", "accepted", "rejected",
                                                                   "rejected_by_reason", "reused", "resumed_parts",
                                                                   "parts", "version", "snapshot", "success",
                                                                   "molecules", "held_out", "steps", "benchmark_molecules",
                                                                   "holdout_loss_before", "holdout_loss_after")}}
        with open(log, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(f"{stage:<10} {row['seconds']:>8.1f} {1000 * row['seconds'] / max(molecules, 1):>9.2f} {cpu:>9.1f} "
              f"{row['peak_rss_mb']:>12.1f}  {json.dumps(row['summary'])}", flush=True)


if __name__ == "__main__":
    main()
