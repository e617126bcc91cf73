"""The file names inside a Ray Train checkpoint and a run's export, shared by both families' loops and
drivers: a resumed run finds what an interrupted one wrote, whichever family wrote it."""

from __future__ import annotations

import json
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


def checkpoint_name(state: dict, *, final: bool = False) -> str:
    """`checkpoint_<step>`, `_final` at the run's end, and a finished run started again (resumed at
    its end to export once more) numbers its next final checkpoint: Ray Train keeps
    train.keep_checkpoints reports, and when a report of the same name was let go, its directory, the
    newest one's too, went with it."""
    name = f"checkpoint_{state['step']:07d}"
    again = state.get("resumed_from", []).count(state["step"])
    return name + ("_final" + (f"_{again}" if again else "") if final else "")


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


def resumed_state(strategy) -> tuple[dict, list[dict]]:
    """A step loop's (state, step history): a fresh run's, or the last checkpoint's, with the
    strategy's weights and optimizer restored from it."""
    if (restored := restore_files()) is None:
        return {"step": 0, "epoch": 0, "resumed_from": []}, []
    files, weights = restored
    saved = json.loads(files[STATE])
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in weights.items():
            (Path(tmp) / name).write_bytes(data)
        strategy.load(Path(tmp))
    history = [json.loads(line) for line in files[HISTORY].splitlines() if line]
    return {**saved, "resumed_from": [*saved["resumed_from"], saved["step"]]}, history


def step_through_epochs(strategy, state: dict, history: list[dict], *, total: int, epoch_batches, step,
                        files, rank: int, tag: str, checkpoint_every: int, epoch_ended=None, step_ended=None) -> None:
    """The pretraining loops' walk over epochs until `total` steps: `epoch_batches(epoch)` is the
    rank's batches of an epoch (a function of the epoch: a resumed run skips the ones done),
    `step(batch, epoch)` one optimizer step's history row; a checkpoint of `files()` every
    `checkpoint_every` steps. `epoch_ended(epoch, rows)`, if given, runs after an epoch's last step
    (or the run's last, which may end one early; `rows`: the epoch's history), before that step's
    checkpoint, so a resumed run has it; `step_ended(step)` likewise after every step, after
    `epoch_ended`. The final checkpoint is the caller's (it carries the export)."""
    while state["step"] < total:
        batches = epoch_batches(state["epoch"])
        first = state["epoch"] * len(batches)
        for batch in batches[state["step"] - first:]:
            row = step(batch, state["epoch"])
            state["step"] += 1
            history.append({"step": state["step"], **row})
            if rank == 0 and state["step"] % max(1, total // 20) == 0:
                print(f"[{tag}] step {state['step']}/{total} loss {row['loss']:.4f}", flush=True)
            if epoch_ended and (state["step"] - first == len(batches) or state["step"] >= total):
                epoch_ended(state["epoch"], [row for row in history if row["step"] > first])
            if step_ended:
                step_ended(state["step"])
            if state["step"] >= total:
                break
            if state["step"] % checkpoint_every == 0:
                report_files(files(), strategy, rank, {"step": state["step"]}, checkpoint_name(state))
        else:
            state["epoch"] += 1
