"""Ingest overhead: the full ingest of the offline ChEBI-20 splits vs the bare per-row kernel.

The kernel is what every row must pay anyway (decode, split, check CID, parse the SMILES syntax);
the pipeline adds de-duplication, Arrow conversion, Parquet writing, hashing and the manifest.
Both run in this one process, on the same files, best of --repeat runs each.

    python -m benchmarks.ingest [--repeat 5]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

from deepmolm.config import load_params
from deepmolm.data.ingest import ingest_chebi20
from deepmolm.data.sources import tsv
from deepmolm.data.sources.chebi20 import locate_split


def bare_kernel(files: list[Path], max_smiles: int, max_description: int) -> int:
    rows = 0
    for path in files:
        for _ in tsv.read_layout(
            path, source="chebi20", split=None, uri="", sha256="",
            max_smiles_chars=max_smiles, max_description_chars=max_description,
        ):
            rows += 1
    return rows


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    params = load_params("params.yaml")
    cfg = params.sources.chebi20
    files = [locate_split(cfg, split, params.paths.cache_dir).path for split in cfg.splits]
    limits = (params.ingest.max_smiles_chars, params.ingest.max_description_chars)
    rows = bare_kernel(files, *limits)
    kernel = best_of(args.repeat, lambda: bare_kernel(files, *limits))
    with tempfile.TemporaryDirectory() as tmp:
        pipeline = best_of(args.repeat, lambda: ingest_chebi20(params, out_root=Path(tmp), progress=False))
    print(f"machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}")
    print(f"rows: {rows} (ChEBI-20 {' + '.join(cfg.splits)})")
    print(f"bare kernel: {kernel:.3f} s ({rows / kernel:,.0f} rows/s)")
    print(f"ingest pipeline: {pipeline:.3f} s ({rows / pipeline:,.0f} rows/s)")
    print(f"ratio pipeline / kernel: {pipeline / kernel:.3f}")


if __name__ == "__main__":
    main()
