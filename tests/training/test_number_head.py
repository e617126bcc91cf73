"""The number head fitted again alone on the frozen model (train.number_head_refit)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed
import torch.multiprocessing

from deepmolm.config import load_params
from deepmolm.models.deepmolm.modeling import number_heads
from deepmolm.training.deepmolm.number_head import refit_number_head, restore_fitted_head, slot_inputs
from flows.local_server import free_port
from tests.conftest import PARAMS
from tests.models.deepmolm.test_molm import VALUES, examples, slot_error, tiny, with_slots, without_geometry


def _batches() -> list[dict[str, torch.Tensor]]:
    """Two batches of slots; in the second, one example has none (a caption among property answers)."""
    second = with_slots(examples(4, seed=1), [12.0, 480.5, 3.3, 0.7])
    second["input_ids"][3, 10] = second["labels"][3, 10] = 11
    second["numbers"][3] = float("nan")
    return [with_slots(examples(8), VALUES), second]


@pytest.mark.learns
def test_the_refit_reads_what_training_reads_and_fits_only_the_head():
    model = tiny().train()
    batches = _batches()
    features, targets, geometry = slot_inputs(model, batches, torch.device("cpu"), bf16=False)
    assert features.shape == (8 + 3, 3 * 64) and model.training, "one row per slot, the model back in training mode"
    assert geometry.all(), "every molecule here has its E3FP"
    with torch.no_grad():
        read = model.number_head(features[:8]).squeeze(-1)
    assert torch.allclose((read - targets[:8]).abs().sum(), slot_error(model.eval(), batches[0]), rtol=1e-5), \
        "the refit fits on the inputs the head has in training and in generation"

    others = {name: p.detach().clone() for name, p in model.named_parameters() if not name.startswith("number_head.")}
    untrained = slot_error(model, batches[0])
    refit = load_params(PARAMS, ["train.number_head_refit.steps=300", "train.number_head_refit.batch_size=8"]
                        ).train.number_head_refit
    figures = refit_number_head(model, batches, [batches[1]], refit, torch.device("cpu"), False, rank=0, world=1)
    assert figures["slots"] == 11 and figures["held_out_slots"] == 3 and figures["steps"] == 300
    before, after = figures["train_l1"]
    assert after < 0.2 * before, figures
    assert slot_error(model, batches[0]) < 0.2 * untrained, "the model's own head is the fitted one"
    assert all(torch.equal(p, others[name]) for name, p in model.named_parameters() if name in others)

    again = tiny()
    refit_number_head(again, batches, [batches[1]], refit, torch.device("cpu"), False, rank=0, world=1)
    assert all(torch.equal(a, b) for a, b in zip(model.number_head.parameters(), again.number_head.parameters())), \
        "seeded: the same slots give the same head"


@pytest.mark.learns
def test_with_a_head_per_view_each_head_is_fitted_on_its_own_views_slots(tmp_path):
    """The drawing's head on the slots without E3FP only, the other on those with it; each fits its
    own and leaves the other's parameters alone; a finished run restores both."""
    batches = _per_view_batches()
    model = tiny(per_view=True)
    refit = load_params(PARAMS, ["train.number_head_refit.steps=300", "train.number_head_refit.batch_size=8"]
                        ).train.number_head_refit
    untrained = slot_error(model, batches[0])
    figures = refit_number_head(model, batches, [batches[1]], refit, torch.device("cpu"), False, rank=0, world=1)
    drawing = figures["number_head_drawing"]
    assert (figures["slots"], figures["held_out_slots"], drawing["slots"], drawing["held_out_slots"]) == (7, 1, 4, 2)
    for fitted in (figures, drawing):
        assert fitted["train_l1"][1] < 0.2 * fitted["train_l1"][0], fitted
    assert slot_error(model, batches[0]) < 0.2 * untrained, "every slot answered by a fitted head"

    only_one = tiny(per_view=True)
    single = refit_number_head(only_one, [without_geometry(b, list(range(len(b["e3fp"])))) for b in batches], [], refit,
                               torch.device("cpu"), False, rank=0, world=1)
    assert single["slots"] == 0 and single["train_l1"] == [None, None] and single["number_head_drawing"]["slots"] == 11
    untouched = tiny(per_view=True).number_head.parameters()
    assert all(torch.equal(a, b) for a, b in zip(only_one.number_head.parameters(), untouched)), \
        "a head without slots of its view keeps its weights"

    model.save_pretrained(tmp_path / "model")
    fresh = tiny(per_view=True, seed=1)
    restore_fitted_head(fresh, tmp_path / "model")
    for name in ("number_head", "number_head_drawing"):
        fitted, restored = getattr(model, name).parameters(), getattr(fresh, name).parameters()
        assert all(torch.equal(a, b) for a, b in zip(fitted, restored)), name


@pytest.mark.learns
def test_a_stage_without_slots_leaves_the_head_and_a_finished_run_restores_it(tmp_path):
    model = tiny()
    captions = examples(4) | {"numbers": torch.full((4,), float("nan"))}  # as collate gives them
    before = [p.detach().clone() for p in model.number_head.parameters()]
    refit = load_params(PARAMS).train.number_head_refit
    assert refit_number_head(model, [captions], [], refit, torch.device("cpu"), False, rank=0, world=1) is None
    assert all(torch.equal(a, b) for a, b in zip(before, model.number_head.parameters()))

    with torch.no_grad():
        for p in model.number_head.parameters():
            p.add_(1.0)
    model.save_pretrained(tmp_path / "model")
    fresh = tiny()
    restore_fitted_head(fresh, tmp_path / "model")
    assert all(torch.equal(a, b) for a, b in zip(model.number_head.parameters(), fresh.number_head.parameters()))


def _heads(model) -> dict[str, list]:
    return {name: [p.detach().tolist() for p in head.parameters()] for name, head in number_heads(model).items()}


def _refit_as_worker(rank: int, port: int, out: str, per_view: bool) -> None:
    """One of two gloo workers on loopback: rank 0's share has both batches' slots, rank 1's none."""
    torch.set_num_threads(1)  # as the test process fits its reference
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        batches = _per_view_batches() if per_view else _batches()
        model = tiny(per_view=per_view)
        with torch.no_grad():  # a head this worker does not fit differs here: the broadcast makes them one
            for index, head in enumerate(number_heads(model).values()):
                for weight in head.parameters() if index % 2 != rank else ():
                    weight.add_(1.0)
        mine, held = (batches, []) if rank == 0 else ([], [batches[1]])
        figures = refit_number_head(model, mine, held, _short_refit(), torch.device("cpu"), False, rank=rank, world=2)
        (Path(out) / f"{rank}.json").write_text(json.dumps({"figures": figures, "heads": _heads(model)}))
    finally:
        torch.distributed.destroy_process_group()


def _per_view_batches() -> list[dict[str, torch.Tensor]]:
    return [without_geometry(batch, [0, 1]) for batch in _batches()]  # 2 + 2 of the 11 slots without E3FP


def _short_refit():
    return load_params(PARAMS, ["train.number_head_refit.steps=50", "train.number_head_refit.batch_size=8"]
                       ).train.number_head_refit


@pytest.mark.learns
@pytest.mark.parametrize("per_view", [False, True], ids=["one head", "a head per view"])
def test_two_workers_end_with_the_heads_and_figures_one_worker_fits(tmp_path, per_view):
    """Slots gathered from both workers, one of which had none; with a head per view each worker fits
    one of them at once: the same bytes as one worker fitting all."""
    torch.multiprocessing.spawn(_refit_as_worker, args=(free_port(), str(tmp_path), per_view), nprocs=2)
    first, second = (json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1))
    assert first == second, "both workers hold the same heads and the same figures"
    assert first["figures"]["slots"] + first["figures"].get("number_head_drawing", {}).get("slots", 0) == 11
    assert first["figures"]["held_out_slots"] + first["figures"].get("number_head_drawing", {}).get("held_out_slots", 0) == 3
    assert set(first["heads"]) == ({"number_head", "number_head_drawing"} if per_view else {"number_head"})

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone = tiny(per_view=per_view)
        batches = _per_view_batches() if per_view else _batches()
        figures = refit_number_head(alone, batches, [batches[1]], _short_refit(), torch.device("cpu"), False, rank=0, world=1)
    finally:
        torch.set_num_threads(threads)
    assert first == json.loads(json.dumps({"figures": figures, "heads": _heads(alone)})), "one worker fits the same heads"
