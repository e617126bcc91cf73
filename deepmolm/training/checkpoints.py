"""The file names inside a Ray Train checkpoint and a run's export, shared by both families' loops and
drivers: a resumed run finds what an interrupted one wrote, whichever family wrote it."""

from __future__ import annotations

import tempfile
from pathlib import Path

STATE = "state.json"  # step, epoch, losses so far: where a resumed run starts
HISTORY = "history.jsonl"  # one row per optimizer step; the driver writes steps.csv from it
RESULTS = "results.jsonl"  # MuMo's fine-tuning: one row per finished grid run
EXPORT = "model"  # the exported model (save_pretrained) inside the final checkpoint
PROVENANCE = "provenance.json"  # beside an exported model: its run, steps and inputs


def worker_context():
    """(rank, world size, device) of this Ray Train worker."""
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    return context.get_world_rank(), context.get_world_size(), ray.train.torch.get_device()


def restore_files():
    """The last checkpoint's text files and weight files as bytes (None: a fresh run)."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        directory = Path(directory)
        saved = {name: (directory / name).read_text() for name in (STATE, HISTORY, RESULTS) if (directory / name).is_file()}
        weights = {p.name: p.read_bytes() for p in directory.iterdir() if p.suffix in (".safetensors", ".pt")}
    return saved, weights


def report_files(files: dict[str, str], strategy, rank: int, metrics: dict, name: str, export=None) -> None:
    """A checkpoint of the text files (and the strategy's state, and an exported model at the end)."""
    import ray.train

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        if strategy is not None:
            strategy.save(directory, rank)
        if rank == 0:
            for filename, text in files.items():
                (directory / filename).write_text(text)
            if export is not None:
                export(directory / EXPORT)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None,
                         checkpoint_dir_name=name)
