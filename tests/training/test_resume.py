"""The training loop's resume bookkeeping, without Ray: what a worker starts from and which
micro-batches it still owes, checked against an uninterrupted run of the same bookkeeping."""

from __future__ import annotations

from deepmolm.training.deepmolm.data import epoch_batches
from deepmolm.training.deepmolm.loop import after_step, next_epoch, remaining, start_state


def _run(rows: int, epochs: int, accum: int, *, stop_after: int | None = None, state: dict | None = None):
    """The worker loop's walk over its micro-batches with its own bookkeeping calls (no model, no
    Ray): the batches stepped on, in order."""
    state = start_state(state)
    batches_per_epoch = len(epoch_batches(rows, seed=3, epoch=0, rank=0, world=1, batch_size=2)) // accum * accum
    total, seen = epochs * batches_per_epoch // accum, []
    while state["step"] < total:
        order = epoch_batches(rows, seed=3, epoch=state["epoch"], rank=0, world=1, batch_size=2)[:batches_per_epoch]
        pending = 0
        for index, batch in enumerate(remaining(order, state["batches_in_epoch"]), start=state["batches_in_epoch"]):
            pending += 1
            seen.append(tuple(batch))
            if pending < accum:
                continue
            after_step(state, index)
            pending = 0
            if stop_after is not None and state["step"] == stop_after:
                return seen, dict(state)
            if state["step"] >= total:
                break
        if state["step"] < total:
            next_epoch(state)
    return seen, state


def test_a_fresh_start_and_a_resume_note_where_they_began():
    assert start_state(None) == {"step": 0, "epoch": 0, "batches_in_epoch": 0, "resumed_from": []}
    saved = {"step": 7, "epoch": 1, "batches_in_epoch": 6, "resumed_from": [3]}
    assert start_state(saved) == {**saved, "resumed_from": [3, 7]}
    assert saved["resumed_from"] == [3], "the checkpoint's own state is not changed"


def test_an_interrupted_run_resumed_sees_exactly_the_batches_of_an_uninterrupted_one():
    whole, final = _run(rows=40, epochs=3, accum=2)
    for stop in (1, 4, 5, 9, 10, 11):  # mid-epoch, at an epoch's last step, in the last epoch
        before, saved = _run(rows=40, epochs=3, accum=2, stop_after=stop)
        after, resumed = _run(rows=40, epochs=3, accum=2, state=saved)
        assert before + after == whole, f"stopped after step {stop}"
        assert resumed["step"] == final["step"] and resumed["resumed_from"] == [stop]


def test_remaining_skips_micro_batches_not_steps():
    order = [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert remaining(order, 0) == order and remaining(order, 3) == [[6, 7]] and remaining(order, 4) == []
