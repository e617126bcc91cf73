"""Time and memory of the data stages as the corpus grows, in one run.

`python -m benchmarks.scale [--sizes 6601 30000 100000] [--out DIR] [--no-conformers-above 6601]`
builds, per size N, a corpus in ChEBI-20's layout (N = 6,601 is the offline corpus itself, larger
sizes add molecules of deepmolm/data/synthetic.py), then runs each stage as the CLI does in its own
process: ingest -> featurize -> validate -> instructions -> tokenizer -> the drawing store (every
drawing shrunk once to the model's size, on a local Ray as training does) -> one epoch of the
training data loader -> the retrieval baseline, and an incremental refresh (+1% new and 0.1% edited rows,
featurized again against the full run). Per stage and N it prints wall seconds, seconds per 1,000
molecules (of examples read, for the loader; the baseline answers `--queries` fixed queries from a
pool that grows with N) and the peak RSS of the stage's process tree (Dask workers included),
sampled every 0.2 s. Above `--no-conformers-above` molecules featurization runs with
`featurize.conformer.method=none` (no conformer, so no E3FP), as the issue allows; the table says
so per row (`--no-conformers-above 0`: every size alike, so the ratios compare like with like).
`--stages` runs some of them in an `--out` kept from an earlier run (its corpus and outputs reused),
so the 100,000 featurization can run once and the later stages be measured again after a change;
every measured stage is appended to `n<N>/results.jsonl`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DEEPMOLM_SHARED", REPO.parent / "shared")).resolve()
SPLITS = ("validation", "test")
STAGES = ("ingest", "featurize", "validate", "instructions", "tokenizer", "drawings", "loader", "baseline", "refresh")


def corpus(out: Path, size: int, seed: int = 0) -> Path:
    """The offline corpus, or its first `size` rows, plus synthetic molecules beyond 6,601."""
    from deepmolm.data.synthetic import HEADER, generate, read_parents

    mirror = SHARED / "data" / "chebi20"
    out.mkdir(parents=True, exist_ok=True)
    lines = {split: (mirror / f"{split}.txt").read_text(encoding="utf-8").splitlines()[1:] for split in SPLITS}
    offline = sum(len(v) for v in lines.values())
    keep = {split: lines[split][: max(0, min(len(lines[split]), size * len(lines[split]) // offline))] for split in SPLITS}
    extra = max(0, size - sum(len(v) for v in keep.values()))
    molecules = generate(read_parents(mirror), extra, seed=seed) if extra else iter(())
    for index, molecule in enumerate(molecules):
        keep[SPLITS[index % 2]].append(f"{molecule.cid}\t{molecule.smiles}\t{molecule.description}")
    for split in SPLITS:
        (out / f"{split}.txt").write_text(HEADER + "".join(line + "\n" for line in keep[split]), encoding="utf-8")
    return out


def grown(source: Path, out: Path, new: float = 0.01, edited: float = 0.001, seed: int = 1) -> Path:
    """`source` with `new` of its size in new synthetic molecules and every 1/`edited`-th row's
    description changed (a refreshed source: what the incremental featurization must recompute)."""
    from deepmolm.data.synthetic import CID_BASE, HEADER, generate, read_parents

    out.mkdir(parents=True, exist_ok=True)
    rows = {split: (source / f"{split}.txt").read_text(encoding="utf-8").splitlines()[1:] for split in SPLITS}
    total = sum(len(v) for v in rows.values())
    every = max(1, int(1 / edited))
    for split in SPLITS:
        rows[split] = [line + " Revised." if i % every == every - 1 else line for i, line in enumerate(rows[split])]
    taken = {line.split("\t", 2)[1] for lines in rows.values() for line in lines}
    parents = read_parents(SHARED / "data" / "chebi20")
    added = 0
    for molecule in generate(parents, int(total * new) * 2, seed=seed):
        if added == int(total * new):
            break
        if molecule.smiles in taken:
            continue
        rows[SPLITS[added % 2]].append(f"{CID_BASE // 2 + added}\t{molecule.smiles}\t{molecule.description}")
        added += 1
    for split in SPLITS:
        (out / f"{split}.txt").write_text(HEADER + "".join(line + "\n" for line in rows[split]), encoding="utf-8")
    return out


def measured(command: list[str], cwd: Path, env: dict) -> dict:
    """Wall seconds and the peak summed RSS of the process and its descendants."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, done = 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        root = psutil.Process(process.pid)
        while not done.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = process.communicate()
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} exited {process.returncode}:\n{err[-3000:]}")
    return {"seconds": round(time.perf_counter() - started, 1), "peak_rss_mb": round(peak / 2**20, 1),
            "summary": _last_json(out)}


def _last_json(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return None


def stage_commands(mirror: Path, conformers: bool, loader_rows: int | None = None,
                   queries: int = 1000) -> list[tuple[str, list[str]]]:
    common = ["-S", f"sources.chebi20.mirror={mirror}", "-S", "sources.chebi20.max_rows_per_split=null",
              "-S", "sources.chebi20.sha256.validation=null", "-S", "sources.chebi20.sha256.test=null",
              *(["-S", "featurize.conformer.method=none"] if not conformers else [])]
    deepmolm = str(Path(sys.executable).with_name("deepmolm"))
    loader = [sys.executable, "-m", "benchmarks.scale", "--loader-epoch", "data/instructions/chebi20", "models/tokenizer",
              *(["--loader-rows", str(loader_rows)] if loader_rows else [])]
    drawings = [sys.executable, "-m", "benchmarks.scale", "--drawings", "data/instructions/chebi20"]
    return [
        ("ingest", [deepmolm, "data", "ingest", "--source", "chebi20", "--quiet", "--json", *common]),
        ("featurize", [deepmolm, "data", "featurize", "--input", "data/raw/chebi20", "--out", "data/shards", "--quiet",
                       "--json", *common]),
        ("validate", [deepmolm, "data", "validate", "--shards", "data/shards/chebi20", "--quiet", "--json", *common]),
        ("instructions", [deepmolm, "data", "instructions", "--shards", "data/shards/chebi20", "--json", *common]),
        ("tokenizer", [deepmolm, "model", "tokenizer", "--instructions", "data/instructions/chebi20", "--out",
                       "models/tokenizer", "--json", *common]),
        ("drawings", drawings),
        ("loader", loader),
        ("baseline", [deepmolm, "eval", "baseline", "--train", "data/shards/chebi20", "--test", "data/shards/chebi20",
                      "--out", "reports/baseline.jsonl", "--train-split", "validation", "--test-split", "test",
                      "--max-queries", str(queries), "--json", *common]),
    ]


def drawing_store(instructions: Path) -> Path:
    """The store training reads (launch.prepare_drawings: built on Ray, reused when it exists)."""
    from deepmolm.config import load_params
    from deepmolm.data.instructions import resolve_instruction_set
    from deepmolm.training.deepmolm.launch import prepare_drawings

    return prepare_drawings(load_params(Path("params.yaml"), []), resolve_instruction_set(Path(instructions).resolve()))


def loader_epoch(instructions: Path, tokenizer: Path, limit: int | None) -> None:
    """One pass of the training data path over the stage-2 training rows in the order of a worker's
    first epoch (a seeded permutation: what the row-group and drawing caches really see), the first
    `limit` rows of it when given."""
    from deepmolm.config import load_params
    from deepmolm.data.instructions import resolve_instruction_set
    from deepmolm.models.deepmolm.presets import model_config
    from deepmolm.models.deepmolm.tokenizer import load_tokenizer
    from deepmolm.training.deepmolm.data import InstructionDataset, epoch_batches
    from deepmolm.training.deepmolm.rows import stage_rows

    params = load_params(Path("params.yaml"), [])
    spec = model_config(params).encoder_spec()
    tok = load_tokenizer(tokenizer)
    instructions = resolve_instruction_set(Path(instructions).resolve())
    rows = stage_rows(params, 2, instructions, tok, spec.tokens)
    dataset = InstructionDataset(instructions, tok, drawings=drawing_store(instructions), image_tokens=spec.tokens,
                                 max_length=params.model.max_length, rows=rows["train"])
    order = [i for batch in epoch_batches(len(dataset), seed=params.train.seed, epoch=0, rank=0, world=1,
                                          batch_size=params.train.micro_batch_size) for i in batch][:limit]
    for index in order:
        dataset[index]
    print(json.dumps({"rows": len(dataset), "read": len(order)}))


def project_at(root: Path, fresh: bool = True) -> Path:
    """A project as a clone has it, with ../shared beside it: params.yaml's relative paths resolve.
    `fresh=False` keeps one an earlier run left (its corpus, shards and instructions)."""
    project = root / "main"
    if fresh or not (project / "params.yaml").exists():
        shutil.rmtree(root, ignore_errors=True)
        project.mkdir(parents=True)
        (root / "shared").symlink_to(SHARED)
    # the code's own params and contracts, also in a kept project: its stages are measured as they are now
    shutil.copy(REPO / "params.yaml", project / "params.yaml")
    shutil.copytree(REPO / "data_contracts", project / "data_contracts", dirs_exist_ok=True)
    return project


def run_size(size: int, work: Path, conformers: bool, env: dict, loader_rows: int | None,
             stages: tuple[str, ...] = STAGES) -> list[dict]:
    project = project_at(work / f"n{size}", fresh=stages == STAGES)
    mirror = project / "corpus" if (project / "corpus").is_dir() else corpus(project / "corpus", size)
    log = project.parent / "results.jsonl"
    results = []
    for name, command in stage_commands(mirror, conformers, loader_rows):
        if name not in stages:
            continue
        result = measured(command, project, env)
        # the loader reads examples (a capped epoch reads fewer than 5 a molecule): per 1,000 examples read
        units = result["summary"]["read"] if name == "loader" else size
        results.append({"stage": name, "n": size, "conformers": conformers, **result,
                        "per": "examples read" if name == "loader" else "molecules",
                        "s_per_1000": round(result["seconds"] / units * 1000, 2)})
        _append(log, results[-1])
        print(f"N={size:>7,} {name:<13} {result['seconds']:>8.1f} s {results[-1]['s_per_1000']:>7.2f} s/1k "
              f"{result['peak_rss_mb']:>8.1f} MB", flush=True)
    if "refresh" not in stages:
        return results
    full_featurize = next((r for r in _read(log) if r["stage"] == "featurize"), None)
    if full_featurize is None:
        raise SystemExit(f"the refresh is measured against the full featurization: none in {log}")
    refreshed = grown(mirror, project / "corpus-grown")
    shards = project / "data" / "shards" / "chebi20"
    for version in shards.iterdir():  # an earlier refresh's version would make this one a no-op
        if version.is_dir() and version.name != full_featurize["summary"]["version"]:
            shutil.rmtree(version)
    commands = dict(stage_commands(refreshed, conformers))
    measured(commands["ingest"], project, env)
    again = measured(commands["featurize"], project, env)
    results.append({"stage": "refresh +1% new, 0.1% edited", "n": size, "conformers": conformers, **again,
                    "s_per_1000": round(again["seconds"] / size * 1000, 2),
                    "share_of_full": round(again["seconds"] / full_featurize["seconds"], 3)})
    _append(log, results[-1])
    print(f"N={size:>7,} refresh: {again['seconds']:.1f} s = {results[-1]['share_of_full']:.1%} of the full featurization",
          flush=True)
    return results


def _append(log: Path, result: dict) -> None:
    with log.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(result) + "\n")


def _read(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()] if log.exists() else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[6601, 30000, 100000])
    parser.add_argument("--out", type=Path, default=None, help="working directory (default: a temporary one, removed)")
    parser.add_argument("--no-conformers-above", type=int, default=6601)
    parser.add_argument("--loader-rows", type=int, default=None,
                        help="read only the first N rows of the loader's epoch (default: all of it)")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES),
                        help="measure only these (with --out: reuses what an earlier run left there)")
    parser.add_argument("--loader-epoch", nargs=2, type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--drawings", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loader_epoch:
        loader_epoch(*args.loader_epoch, args.loader_rows)
        return
    if args.drawings:
        print(json.dumps({"store": str(drawing_store(args.drawings))}))
        return
    work = args.out or Path(os.environ.get("TMPDIR", "/tmp")) / f"deepmolm-scale-{os.getpid()}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    print(f"{platform.node()}: {os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB")
    stages = tuple(name for name in STAGES if name in args.stages)
    if stages != STAGES and args.out is None:
        parser.error("--stages needs --out: the stages it skips must have run there")
    results = []
    for size in args.sizes:
        results += run_size(size, work, size <= args.no_conformers_above, env, args.loader_rows, stages)
    print(json.dumps(results))
    if args.out is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
