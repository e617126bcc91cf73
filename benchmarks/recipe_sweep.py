"""The CPU recipe's sweep: stage 2 runs that differ in one knob, scored on held-out validation molecules.

Every configuration starts from the same stage-1 model and trains stage 2 on `train.splits` minus
`train.holdout`; it is then scored on the held-out molecules (`eval.on_holdout`), never on the test
split, so choosing a recipe from this table does not tune on the test set. Prints one markdown row
per configuration: the overrides, steps, last training loss, held-out loss, caption scores, property
answers with a number and MAE, and minutes.

    python -m benchmarks.recipe_sweep --instructions DIR --tokenizer DIR --stage1 DIR --out DIR \\
        --base train.stage2.max_steps=150 --config train.stage2.learning_rate=3e-4 --config ...
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from deepmolm.config import load_params
from deepmolm.evaluation.evaluate import evaluate
from deepmolm.training.deepmolm.launch import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--instructions", type=Path, required=True)
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--stage1", type=Path, required=True, help="the stage-1 model every configuration starts from")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--base", action="append", default=[], help="an override of every configuration")
    parser.add_argument("--config", action="append", required=True,
                        help="one configuration: comma-separated overrides (key=value,key=value)")
    parser.add_argument("--eval-examples", type=int, default=100, help="held-out examples per task scored")
    args = parser.parse_args()
    print("| configuration | steps | last loss | held-out loss | BLEU-2 | METEOR | degenerate | numbers (min over properties) "
          "| MAE mw / logp / tpsa / complexity | minutes |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for index, config in enumerate(args.config):
        overrides = [*args.base, *[o for o in config.split(",") if o]]
        root = args.out / f"config{index}"
        params = load_params(args.params, overrides=[*overrides, f"train.runs_dir={root / 'runs'}", f"paths.reports_dir={root / 'reports'}",
                                        "eval.on_holdout=true", f"eval.max_examples_per_task={args.eval_examples}"])
        started = time.perf_counter()
        summary = run_stage(params, 2, instructions=args.instructions, init=args.stage1, out=root / "stage2")
        minutes = (time.perf_counter() - started) / 60
        metrics = evaluate(params, root / "stage2", args.instructions, out=root / "eval")
        captions, properties = metrics["model"]["captions"] or {}, metrics["model"]["properties"]
        numbers = min((p["valid_ratio"] for p in properties.values()), default=0.0)
        maes = " / ".join("-" if properties.get(n, {}).get("mae") is None else f"{properties[n]['mae']:.1f}"
                          for n in ("mw", "logp", "tpsa", "complexity"))
        print(f"| {', '.join(config.split(','))} | {summary['steps']} | {summary['last_loss']:.3f} | "
              f"{summary['holdout_loss']:.3f} | {captions.get('bleu2', 0):.3f} | {captions.get('meteor', 0):.3f} | "
              f"{captions.get('degenerate', 0):.1%} | {numbers:.0%} | {maes} | {minutes:.1f} |", flush=True)
        (root / "result.json").write_text(json.dumps({"overrides": overrides, "summary": summary, "metrics": metrics},
                                                     indent=2))


if __name__ == "__main__":
    main()
