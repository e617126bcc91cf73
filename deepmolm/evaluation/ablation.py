"""The paper's ablations as a grid of queued DVC experiments, and their table beside what the paper reports.

One experiment per cell (a projector variant, or a variant without stage 1, at one seed): `dvc exp
run --queue report -S ...`, then `dvc queue start`, so every cell is the pipeline itself with a few
params changed, reproducible from its experiment ref, listed by `dvc exp show` and comparable with
`dvc plots diff`. The stages up to the tokenizer do not depend on the changed params, so DVC restores
them from its cache and each cell trains, evaluates and reports only.

DVC runs a queued experiment in a copy of the repository under `.dvc/tmp/exps/<tmpdir>/`, where a
dependency outside the project (`../shared/...`) would name a directory that is not there; the grid
links each such top-level directory next to the copies before the queue starts.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from deepmolm.config import AblationParams

RESULTS = "ablation.json"
TABLE = "ablation.md"
EXPERIMENT_PREFIX = "ablation"
TARGET = "report"  # what each experiment reproduces: training, evaluation and the page, not MuMo
METRICS_FILE = "reports/eval/metrics.json"
CAPTION_METRICS = ("bleu2", "bleu4", "rougeL", "meteor", "degenerate")  # degenerate: share of looping captions
PROPERTIES = ("mw", "logp", "tpsa", "complexity")


@dataclass(frozen=True)
class Cell:
    name: str  # the DVC experiment's name
    row: str  # the table row it counts towards: a variant, or "<variant> without stage 1"
    variant: str
    stage1: bool
    seed: int

    @property
    def overrides(self) -> tuple[str, ...]:
        values = [f"model.fusion_variant={self.variant}", f"train.seed={self.seed}"]
        return tuple(values if self.stage1 else [*values, "train.stage1.epochs=0"])


def row_name(variant: str, stage1: bool) -> str:
    return variant if stage1 else f"{variant} without stage 1"


def cells(ablation: AblationParams) -> list[Cell]:
    """Seed by seed, so a grid stopped half-way has every row at its first seed."""
    grid = []
    for seed in ablation.seeds:
        for variant, stage1 in [*((v, True) for v in ablation.variants), *((v, False) for v in ablation.without_stage1)]:
            tag = variant if stage1 else f"{variant}-nostage1"
            grid.append(Cell(f"{EXPERIMENT_PREFIX}-{tag.replace('_', '-')}-s{seed}", row_name(variant, stage1),
                             variant, stage1, seed))
    return grid


# ---------------------------------------------------------------- running the grid with DVC


def link_external_dependencies(root: Path) -> list[Path]:
    """For each top-level directory outside the project that dvc.yaml depends on (`../shared`),
    a link of the same name beside DVC's experiment copies, pointing at the real one."""
    root = Path(root).resolve()
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    outside = sorted({Path(dep).parts[1] for stage in stages.values() for dep in stage.get("deps", [])
                      if Path(dep).parts[:1] == ("..",) and len(Path(dep).parts) > 1})
    copies = root / ".dvc" / "tmp" / "exps"
    copies.mkdir(parents=True, exist_ok=True)
    linked = []
    for name in outside:
        target, link = (root.parent / name).resolve(), copies / name
        if not target.exists():
            raise FileNotFoundError(f"dvc.yaml depends on ../{name}, which is not at {target}")
        if link.is_symlink() and link.resolve() == target:
            linked.append(link)
            continue
        if link.is_symlink() or link.exists():
            raise FileExistsError(f"{link} is in the way of the link to {target}: remove it")
        link.symlink_to(target, target_is_directory=True)
        linked.append(link)
    return linked


# a `dvc exp show` polled while the queue's worker finishes can block for good (seen here once in CI:
# stuck 4 minutes after the last experiment ended and the worker stopped; DVC reports such hangs on
# its experiment lock, treeverse/dvc#8762); the call is ended after this long and, for `exp show`,
# tried again
DVC_ANSWER_S = 120


def _dvc(root: Path, *args: str, timeout_s: float = DVC_ANSWER_S) -> str:
    try:
        result = subprocess.run(["dvc", *args], cwd=root, text=True, capture_output=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"`dvc {' '.join(args)}` did not answer in {timeout_s:.0f} s") from None
    if result.returncode != 0:
        detail = (result.stderr or result.stdout or "").strip().splitlines()[-5:]
        raise RuntimeError(f"`dvc {' '.join(args)}` failed ({result.returncode}): " + " | ".join(detail))
    return result.stdout


def experiments(root: Path) -> dict[str, tuple[str, dict]]:
    """Every local experiment by name: its state (queued, running, success, failed) and its data
    as `dvc exp show --json` reports it (metrics and params files, {"data": ...} each), whichever
    commit it was run from (showing all commits would read every commit's metrics)."""
    # HEAD first: `dvc exp ls` names only experiments that have finished, `dvc exp show` of HEAD also
    # the ones queued or running from it
    baselines = ["HEAD", *(line.rstrip(":").strip() for line in _dvc(root, "exp", "ls", "--all-commits").splitlines()
                           if line.strip() and not line[0].isspace())]
    found: dict[str, tuple[str, dict]] = {}
    for baseline in dict.fromkeys(baselines):
        for name, entry in experiment_states(json.loads(_shown(root, baseline) or "[]")).items():
            if name not in found or (entry[1].get("timestamp") or "") >= (found[name][1].get("timestamp") or ""):
                found[name] = entry  # the same name run again from a newer commit (--force): the newest counts
    return found


def _shown(root: Path, baseline: str, timeout_s: float = DVC_ANSWER_S) -> str:
    """`dvc exp show --json --rev baseline`, tried again: read while an experiment finishes, DVC can
    fail on the temporary copy it is removing at that moment, or block (both races, gone on retry)."""
    from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_fixed

    for attempt in Retrying(retry=retry_if_exception_type(RuntimeError), stop=stop_after_attempt(4), wait=wait_fixed(1),
                            reraise=True):
        with attempt:
            return _dvc(root, "exp", "show", "--json", "--rev", baseline, timeout_s=timeout_s)
    raise AssertionError("unreachable")


def experiment_states(shown: list[dict]) -> dict[str, tuple[str, dict]]:
    """The named experiments of one `dvc exp show --json`, with their state; one without an executor
    record finished in an earlier queue. A queued or running one is listed with its baseline's
    metrics, which are not its results."""
    found = {}
    for commit in shown:
        for experiment in commit.get("experiments") or []:
            state = (experiment.get("executor") or {}).get("state", "success")
            for rev in experiment.get("revs") or []:
                if rev.get("name"):
                    found[rev["name"]] = ("failed" if rev.get("error") else state, rev.get("data") or {})
    return found


def metrics_of(data: dict) -> dict[str, dict]:
    """An experiment's metrics files ({path: content}) from its `dvc exp show` data."""
    return {path: entry["data"] for path, entry in (data.get("metrics") or {}).items() if entry.get("data")}


def run_grid(root: Path, grid: list[Cell], *, target: str = TARGET, metrics_file: str = METRICS_FILE,
             force: bool = False, echo: Callable[[str], None] = print) -> dict[str, dict[str, dict]]:
    """Queue the cells without a finished experiment (every cell with `force`), run the queue one
    experiment at a time (on two cores a second would only halve the first's speed), follow each
    experiment's log, and return every cell's metrics files by name. A rerun after a kill queues only
    what is missing: finished cells are kept, and cells still queued or running are waited for."""
    root = Path(root).resolve()
    link_external_dependencies(root)
    states = experiments(root)
    pending = [cell for cell in grid if not force and states.get(cell.name, ("",))[0] in ("queued", "running")]
    queued = [cell for cell in grid if cell not in pending and (force or not _finished(states.get(cell.name), metrics_file))]
    for cell in queued:
        args = [arg for value in cell.overrides for arg in ("-S", value)]
        again = force or cell.name in states  # a failed cell's name is taken
        _dvc(root, "exp", "run", "--queue", target, "--name", cell.name, *(["--force"] if again else []), *args)
        echo(f"queued {cell.name}: {' '.join(cell.overrides)}")
    waiting = pending + queued
    if waiting:
        started = time.monotonic()
        # the worker it starts outlives the command and keeps its output streams: not captured
        subprocess.run(["dvc", "queue", "start", "--jobs", "1"], cwd=root, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for number, cell in enumerate(waiting, 1):
            echo(f"[{number}/{len(waiting)}] {cell.name} ({(time.monotonic() - started) / 60:.1f} min into the grid)")
            state = _follow(root, cell.name)
            echo(f"{cell.name}: {state}")
        echo(f"{len(waiting)} experiments in {(time.monotonic() - started) / 60:.1f} min")
    states = experiments(root)
    missing = [cell.name for cell in grid if not _finished(states.get(cell.name), metrics_file)]
    if missing:
        raise RuntimeError(f"no metrics for {', '.join(missing)}: `dvc queue status` and `dvc queue logs NAME` say why")
    return {cell.name: metrics_of(states[cell.name][1]) for cell in grid}


def _follow(root: Path, name: str, poll_s: float = 3.0) -> str:
    """Wait for one queued experiment, showing its log while it runs (`dvc queue logs --follow`
    refuses an experiment that has not started yet); its final state."""
    followed = False
    while True:
        state = experiments(root).get(name, ("missing", {}))[0]
        if state not in ("queued", "running"):
            return state
        if state == "running" and not followed:
            followed = subprocess.run(["dvc", "queue", "logs", "--follow", name], cwd=root, check=False).returncode == 0
            continue
        time.sleep(poll_s)


def _finished(entry: tuple[str, dict] | None, metrics_file: str) -> bool:
    return entry is not None and entry[0] == "success" and metrics_file in metrics_of(entry[1])


# ---------------------------------------------------------------- the table


def _metric(metrics: dict, name: str) -> float | None:
    if name in CAPTION_METRICS:
        return ((metrics.get("model") or {}).get("captions") or {}).get(name)
    return (((metrics.get("model") or {}).get("properties") or {}).get(name) or {}).get("mae")


STAGE_METRICS = "reports/train/stage{}/metrics.json"


def summarize(grid: list[Cell], results: dict[str, dict[str, dict]], metrics_file: str = METRICS_FILE) -> dict:
    """Per row: every seed's value of each metric, their mean, min and max, and the optimizer steps
    of each stage; then the paper's directions checked against the means and the spread."""
    rows = {}
    for cell in grid:
        files = results[cell.name]
        row = rows.setdefault(cell.row, {"row": cell.row, "variant": cell.variant, "stage1": cell.stage1,
                                         "seeds": [], "experiments": [], "steps": [], "values": {}})
        row["seeds"].append(cell.seed)
        row["experiments"].append(cell.name)
        row["steps"].append([(files.get(STAGE_METRICS.format(n)) or {}).get("steps") for n in (1, 2)])
        for name in (*CAPTION_METRICS, *PROPERTIES):
            row["values"].setdefault(name, []).append(_metric(files[metrics_file], name))
    for row in rows.values():
        row["stats"] = {name: _stats(values) for name, values in row["values"].items()}
    first = results[grid[0].name]
    evaluated, trained = first[metrics_file].get("dataset", {}), first.get(STAGE_METRICS.format(2)) or {}
    return {"rows": list(rows.values()), "directions": directions(rows),
            "train_molecules": (trained.get("row_counts") or {}).get("train_molecules"),
            "eval_molecules": evaluated.get("eval_molecules"), "eval_splits": evaluated.get("eval_splits")}


def _stats(values: list[float | None]) -> dict | None:
    present = [v for v in values if v is not None]
    if not present:
        return None
    return {"mean": statistics.fmean(present), "min": min(present), "max": max(present), "n": len(present)}


# What the DeepMoLM paper reports for its ablations (lower is worse for the text metrics).
PAPER_DIRECTIONS = (
    {"id": "no_stage1", "claim": "without stage-1 pretraining METEOR falls by more than 10 points",
     "worse": "fusion without stage 1", "than": "fusion", "metric": "meteor", "by_at_least": 0.10},
    {"id": "concat_vs_linear", "claim": "concatenation does worse than a plain linear projector",
     "worse": "concat", "than": "linear", "metric": "meteor", "by_at_least": 0.0},
    {"id": "no_e3fp", "claim": "removing the 3D fingerprint gives the weakest ROUGE-L",
     "worse": "fusion_zero_e3fp", "than": "*", "metric": "rougeL", "by_at_least": 0.0},
    {"id": "fusion_best", "claim": "the full model (cross-attention fusion) scores best",
     "worse": "*", "than": "fusion", "metric": "meteor", "by_at_least": 0.0},
)


def directions(rows: dict[str, dict]) -> list[dict]:
    """Each claim against our means: "agrees" when the difference has the paper's sign and is larger
    than the seeds' spread (the widest min-max range of the rows compared), "agrees within the seed
    spread" when the sign is right but the seeds overlap, "disagrees" (or "... within the seed spread")
    otherwise. "*" compares against every other row: the paper's worst (or best) must be ours."""
    checks = []
    for claim in PAPER_DIRECTIONS:
        metric = claim["metric"]
        if claim["worse"] == "*":
            pairs = [(name, claim["than"]) for name in rows if name != claim["than"]]
        elif claim["than"] == "*":
            pairs = [(claim["worse"], name) for name in rows if name != claim["worse"]]
        else:
            pairs = [(claim["worse"], claim["than"])]
        pairs = [(w, t) for w, t in pairs if w in rows and t in rows and rows[w]["stats"][metric] and rows[t]["stats"][metric]]
        if not pairs:
            checks.append({**claim, "verdict": "not run", "ours": None})
            continue
        gaps = []
        for worse, than in pairs:
            a, b = rows[worse]["stats"][metric], rows[than]["stats"][metric]
            spread = max(a["max"] - a["min"], b["max"] - b["min"])
            gaps.append({"worse": worse, "than": than, "difference": b["mean"] - a["mean"], "spread": spread})
        tightest = min(gaps, key=lambda gap: gap["difference"] - claim["by_at_least"])
        sign_right = tightest["difference"] > claim["by_at_least"]
        clear = abs(tightest["difference"] - claim["by_at_least"]) > tightest["spread"]
        verdict = ("agrees" if sign_right else "disagrees") + ("" if clear else " within the seed spread")
        checks.append({**claim, "verdict": verdict, "ours": tightest, "pairs": gaps})
    return checks


def _fmt(stats: dict | None, digits: int) -> str:
    if stats is None:
        return "-"
    if stats["n"] == 1:
        return f"{stats['mean']:.{digits}f}"
    return f"{stats['mean']:.{digits}f} ({stats['min']:.{digits}f}-{stats['max']:.{digits}f})"


COLUMNS = ("BLEU-2", "BLEU-4", "ROUGE-L", "METEOR", "degenerate", "MAE mw", "MAE logp", "MAE tpsa", "MAE complexity")


def table_rows(summary: dict) -> list[list[str]]:
    """Row, seeds, then mean (min-max over seeds) of each metric."""
    return [[row["row"], ", ".join(map(str, row["seeds"])),
             *(_fmt(row["stats"][name], 3) for name in CAPTION_METRICS),
             *(_fmt(row["stats"][name], 3 if name == "logp" else 1) for name in PROPERTIES)]
            for row in summary["rows"]]


def direction_rows(summary: dict) -> list[list[str]]:
    def ours(check: dict) -> str:
        gap = check["ours"]
        if gap is None:
            return "-"
        side = "lower" if gap["difference"] >= 0 else "higher"
        return (f"{gap['worse']}: {check['metric']} {abs(gap['difference']):.3f} {side} than {gap['than']} "
                f"(seed spread {gap['spread']:.3f})")
    return [[check["claim"], ours(check), check["verdict"]] for check in summary["directions"]]


def markdown(summary: dict) -> str:
    head = ["row", "seeds", *COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(summary)]
    lines += ["", "| the paper | ours (closest case) | verdict |", "| --- | --- | --- |"]
    lines += ["| " + " | ".join(row) + " |" for row in direction_rows(summary)]
    return "\n".join(lines) + "\n"


def write_summary(summary: dict, out: Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULTS).write_text(json.dumps(summary, indent=2) + "\n")
    (out / TABLE).write_text(markdown(summary))
    return out / RESULTS

