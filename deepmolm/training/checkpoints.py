"""The file names inside a Ray Train checkpoint and a run's export, shared by both families' loops and
drivers: a resumed run finds what an interrupted one wrote, whichever family wrote it."""

from __future__ import annotations

STATE = "state.json"  # step, epoch, losses so far: where a resumed run starts
HISTORY = "history.jsonl"  # one row per optimizer step; the driver writes steps.csv from it
RESULTS = "results.jsonl"  # MuMo's fine-tuning: one row per finished grid run
EXPORT = "model"  # the exported model (save_pretrained) inside the final checkpoint
PROVENANCE = "provenance.json"  # beside an exported model: its run, steps and inputs
