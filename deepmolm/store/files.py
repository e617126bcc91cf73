"""Files as every stage writes them: Parquet with fixed writer options (the same rows give the same
bytes, so DVC's hashes are reproducible), written under a temporary name and renamed into place (a
reader never sees half a file), and checksummed in chunks."""

from __future__ import annotations

import errno
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


PARQUET_OPTIONS = {"write_statistics": True, "use_dictionary": True}


def write_parquet(table: pa.Table, path: Path, *, compression: str = "zstd") -> None:
    pq.write_table(table, path, compression=compression, **PARQUET_OPTIONS)


def parquet_writer(path: Path, schema: pa.Schema, *, compression: str = "zstd") -> pq.ParquetWriter:
    """A file written one row group at a time (`write_table` per group), with write_parquet's options:
    what a table too large to hold is written with."""
    return pq.ParquetWriter(path, schema, compression=compression, **PARQUET_OPTIONS)


def write_parquet_atomic(table: pa.Table, path: Path, *, compression: str = "zstd") -> None:
    path = Path(path)
    temporary = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        write_parquet(table, temporary, compression=compression)
    except BaseException:
        temporary.unlink(missing_ok=True)  # half a file would keep taking the space that ran out
        raise
    os.replace(temporary, path)


# What the storage itself refuses: a retry cannot help, a person has to make room or fix permissions.
STORAGE_PROBLEMS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


class StorageError(Exception):
    """Output that the storage cannot take (full, read-only, not writable), said once with what is
    kept and how to go on, instead of retried and reported as a traceback."""


def storage_problem(exc: BaseException) -> str | None:
    """STORAGE_PROBLEMS' words for `exc`, or None when it is another kind of error (pyarrow's
    OSErrors carry the errno too)."""
    return STORAGE_PROBLEMS.get(exc.errno) if isinstance(exc, OSError) else None
