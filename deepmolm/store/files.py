"""Files as every stage writes them: Parquet with fixed writer options (the same rows give the same
bytes, so DVC's hashes are reproducible), written under a temporary name and renamed into place (a
reader never sees half a file), and checksummed in chunks."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_parquet(table: pa.Table, path: Path, *, compression: str = "zstd") -> None:
    pq.write_table(table, path, compression=compression, write_statistics=True, use_dictionary=True)


def write_parquet_atomic(table: pa.Table, path: Path, *, compression: str = "zstd") -> None:
    path = Path(path)
    temporary = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    write_parquet(table, temporary, compression=compression)
    os.replace(temporary, path)
