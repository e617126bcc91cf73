"""MuMo's training inputs: how molecules are masked and batched over workers, the benchmark's grid,
property molecules that keep every row accounted for, and the results table."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from deepmolm.config import DEFAULT_PARAMS, load_params
from deepmolm.data.property_sets import PropertySet
from deepmolm.evaluation.mumo.benchmark import pretraining_curves, pretraining_figures, results_markdown, results_table
from deepmolm.evaluation.mumo.jobs import benchmark_jobs, held_out_slice
from deepmolm.models.mumo.processing import mask_tokens, model_inputs, property_molecules, with_noisy_conformers
from deepmolm.models.mumo.tokenizer import build_smiles_tokenizer
from deepmolm.training.checkpoints import step_through_epochs
from deepmolm.training.mumo.loop import epoch_batches, held_out_loss


def test_each_global_batch_is_split_over_the_workers_without_overlap():
    for world in (1, 2, 3):
        shares = [epoch_batches(70, 32, seed=5, epoch=1, rank=r, world=world) for r in range(world)]
        assert all(len(s) == 2 for s in shares), "70 molecules are two full batches of 32"
        for step in range(2):
            seen = np.concatenate([s[step] for s in shares])
            assert len(seen) == len(set(seen)) == 32
        assert not set(np.concatenate(shares[0])) & set(np.concatenate(shares[-1])) or world == 1
    again = epoch_batches(70, 32, seed=5, epoch=1, rank=0, world=2)
    assert all((a == b).all() for a, b in zip(again, epoch_batches(70, 32, 5, 1, 0, 2), strict=True))
    assert not (epoch_batches(70, 32, 5, 2, 0, 2)[0] == again[0]).all(), "each epoch has its own order"
    assert [len(b) for b in epoch_batches(10, 32, 0, 0, 0, 1)] == [10], "a set smaller than a batch is one batch"


def test_masking_never_touches_padding_or_the_global_token_and_masks_every_molecule():
    smiles = ["CCO", "c1ccccc1C(=O)O", "CCCCCCCCCCCCCCCCCCCCN"]
    tokenizer = build_smiles_tokenizer(smiles)
    encoded = tokenizer(smiles, padding=True, return_tensors="pt")
    masked = mask_tokens(dict(encoded), tokenizer, 0.3, torch.Generator().manual_seed(0))
    chosen = masked["labels"] != -100
    global_id = tokenizer.convert_tokens_to_ids("[GLOBAL]")
    assert not chosen[encoded["attention_mask"] == 0].any()
    assert not chosen[encoded["input_ids"] == global_id].any()
    assert chosen.sum(1).min() >= 1
    assert torch.equal(masked["labels"][chosen], encoded["input_ids"][chosen])
    unchosen = ~chosen
    assert torch.equal(masked["input_ids"][unchosen], encoded["input_ids"][unchosen])
    big = tokenizer(["C" * 150] * 8, return_tensors="pt")
    rate = (mask_tokens(dict(big), tokenizer, 0.15, torch.Generator().manual_seed(1))["labels"] != -100).float().mean()
    assert 0.1 < rate < 0.2
    replaced = mask_tokens(dict(big), tokenizer, 0.15, torch.Generator().manual_seed(2))
    picked = replaced["labels"] != -100
    assert (replaced["input_ids"][picked] == tokenizer.mask_token_id).float().mean() > 0.6


def test_the_grid_is_every_dataset_split_seed_then_the_other_injection_layers():
    params = load_params(DEFAULT_PARAMS, ["mumo.finetune.seeds=[0,1]", "mumo.ablation.injection_layers=[1,9,16]"])
    jobs = benchmark_jobs(params)
    main = [j for j in jobs if j["injection_layer"] == 9]
    assert len(main) == 2 * 2 * 2 and len({j["name"] for j in jobs}) == len(jobs)
    assert [(j["injection_layer"], j["dataset"], j["split"]) for j in jobs[len(main):]] == [(1, "esol", "random"), (16, "esol", "random")]
    with pytest.raises(ValueError, match="mumo.ablation.injection_layers"):
        load_params(DEFAULT_PARAMS, ["mumo.ablation.injection_layers=[17]"])


def test_property_molecules_keep_their_row_and_noise_moves_only_geometry():
    params = load_params(DEFAULT_PARAMS, [])
    data = PropertySet("tiny", "u", ["CCO", "c1ccccc1O", "[Na+].[Cl-]"], np.array([1.0, 2.0, 3.0]))
    molecules, rejected = property_molecules(data, params.featurize.conformer)
    assert len(molecules) == 3 and rejected == {} and molecules[1].target == 2.0
    shaken = with_noisy_conformers([molecules[1]], 0.5, seed=0)[0]
    assert np.array_equal(shaken.graph.atoms, molecules[1].graph.atoms)
    assert np.array_equal(shaken.graph.bonds, molecules[1].graph.bonds)
    assert not np.allclose(shaken.graph.bond_lengths, molecules[1].graph.bond_lengths)
    tokenizer = build_smiles_tokenizer(data.smiles)
    inputs = model_inputs(tokenizer, molecules, 8)
    assert inputs["input_ids"].shape == (3, 8) and inputs["graph"].num_graphs == 3  # truncated to max_length


def test_results_table_gives_mean_and_std_over_seeds_beside_the_forest_and_the_published_figure():
    params = load_params(DEFAULT_PARAMS, ["mumo.ablation.coordinate_noise=[0.5]"])
    runs = [{"dataset": "esol", "split": "random", "seed": seed, "injection_layer": 9, "sizes": {"test": 113},
             "test": {"rmse": rmse, "mae": rmse / 2}, "test_noise_0.5": {"rmse": rmse + 0.1, "mae": 0}, "valid_rmse": rmse - 0.1}
            for seed, rmse in ((0, 0.6), (1, 0.8), (2, 1.0))]
    runs[2]["valid_rmse"] = float("nan")  # a run without a validation part: its last epoch, no score to choose on
    forest = [{"dataset": "esol", "split": "random", "seed": seed, "test": {"rmse": 0.5, "mae": 0.4}} for seed in (0, 1, 2)]
    table = results_table(params, runs, forest)
    assert len(table) == 1
    row = table[0]
    assert row["mumo_rmse"] == [0.8, 0.163] and row["mumo_mae"] == [0.4, 0.082]
    assert row["rf_rmse"] == [0.5, 0.0] and row["published_rmse"] == [0.536, 0.061]
    assert row["mumo_rmse_noise_0.5"] == [0.9, 0.163] and row["seeds"] == [0, 1, 2]
    assert row["mumo_valid_rmse"] == [0.6, 0.1]
    text = results_markdown({"preset": "tiny", "pretrained": {"molecules": 10, "steps": 3}, "table": table})
    assert "| esol | random | 9 | 3 | 0.800 ± 0.163 |" in text and "noise 0.5 Å | MuMo validation RMSE |" in text
    assert text.splitlines()[4].endswith("| 0.900 ± 0.163 | 0.600 ± 0.100 |")
    text = results_markdown({"preset": "tiny", "pretrained": {"molecules": 90, "steps": 3, "shards": "data/shards/moses/v1"},
                             "pretraining": {"held_out": 10, "holdout_loss_before": 3.7, "holdout_loss_after": 2.9},
                             "table": table})
    assert "pretrained on 90 molecules of `data/shards/moses/v1` (3 steps; held-out MLM loss 3.7 before, 2.9 after, on 10 molecules)" in text


def test_the_commands_name_what_is_missing(tmp_path, small_versions):
    from tests.conftest import run_cli

    done = run_cli("mumo", "benchmark", "--pretrained", str(tmp_path / "nowhere"), "--json")
    assert done.returncode == 1 and "no pretrained MuMo at" in json.loads(done.stdout.splitlines()[-1])["error"]
    bare = tmp_path / "bare"
    shutil.copytree(small_versions[0], bare)
    shutil.rmtree(bare / "sfp")  # a version featurized with mumo.sfp off
    done = run_cli("mumo", "pretrain", "--shards", str(bare), "--json")
    assert done.returncode == 1 and "has no SFP table" in json.loads(done.stdout.splitlines()[-1])["error"]


def test_the_held_out_slice_is_seeded_apart_from_training_and_never_takes_everything():
    corpus = list(range(50))
    train, held = held_out_slice(corpus, 10, seed=0)
    assert len(held) == 10 and sorted(train + held) == corpus and train == sorted(train) and held == sorted(held)
    assert held_out_slice(corpus, 10, 0) == (train, held) and held_out_slice(corpus, 10, 1)[1] != held
    assert held_out_slice(corpus, 0, 0) == (corpus, [])
    with pytest.raises(ValueError, match="mumo.pretrain.holdout_molecules"):
        held_out_slice(corpus, 50, 0)


@pytest.mark.learns
def test_the_held_out_loss_masks_alike_every_time_and_falls_as_the_model_learns():
    from deepmolm.models.mumo.modeling import MuMoForMaskedLM
    from deepmolm.models.mumo.presets import mumo_config

    params = load_params(DEFAULT_PARAMS, [])
    smiles = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "CCN(CC)CC", "OC(=O)c1ccccc1", "CC(C)Cc1ccc(C)cc1"]
    molecules, _ = property_molecules(PropertySet("six", "u", smiles, np.zeros(6)), params.featurize.conformer)
    tokenizer = build_smiles_tokenizer(smiles)
    torch.manual_seed(0)
    model = MuMoForMaskedLM(mumo_config(params, vocab_size=len(tokenizer)))
    cpu = torch.device("cpu")

    def loss() -> float:
        return held_out_loss(model, tokenizer, molecules, max_length=32, mask_ratio=0.3, device=cpu, batch_size=4)

    before = loss()
    assert loss() == before and model.training, "the same masks each time; the model left in training mode"
    optimizer, generator = torch.optim.AdamW(model.parameters(), lr=3e-3), torch.Generator().manual_seed(1)
    for _ in range(40):
        inputs = mask_tokens(model_inputs(tokenizer, molecules, 32), tokenizer, 0.3, generator)
        optimizer.zero_grad()
        model(**inputs).loss.backward()
        optimizer.step()
    assert loss() < 0.8 * before, (before, loss())
    assert held_out_loss(model, tokenizer, [], max_length=32, mask_ratio=0.3, device=cpu) is None


@pytest.mark.parametrize("resumed_at", [0, 4])
def test_each_epoch_ends_with_its_own_rows_and_a_short_last_epoch_too(resumed_at):
    state = {"step": resumed_at, "epoch": resumed_at // 3}
    history = [{"step": s, "loss": 0.0} for s in range(1, resumed_at + 1)]
    ended, hooks = [], []
    step_through_epochs(None, state, history, total=7, epoch_batches=lambda epoch: [0, 1, 2],
                        step=lambda batch, epoch: {"loss": float(batch)}, files=dict, rank=0, tag="test",
                        checkpoint_every=1000,
                        epoch_ended=lambda epoch, rows: (ended.append((epoch, [r["step"] for r in rows])),
                                                         hooks.append(f"epoch {epoch}")),
                        step_ended=lambda step: hooks.append(step))
    expected = [(0, [1, 2, 3]), (1, [4, 5, 6]), (2, [7])]
    assert ended == expected[resumed_at // 3:] and state == {"step": 7, "epoch": 2}
    # every step ends once, after its epoch's end where it ends one
    assert hooks == [1, 2, "epoch 0", 3, 4, 5, "epoch 1", 6, "epoch 2", 7][[0, 5][resumed_at // 4]:]


def test_a_finished_run_started_again_reports_its_end_under_a_name_of_its_own():
    """Ray Train lets the oldest of train.keep_checkpoints reports go, directory and all: a finished
    run resumed twice reported `checkpoint_<n>_final` a third time, and the let-go report of that name
    took the new one's files (a DVC repro of MuMo's pretraining then found no exported model)."""
    from deepmolm.training.checkpoints import checkpoint_name

    assert checkpoint_name({"step": 25, "resumed_from": []}) == "checkpoint_0000025"
    assert checkpoint_name({"step": 40, "resumed_from": [25]}, final=True) == "checkpoint_0000040_final"
    names = [checkpoint_name({"step": 40, "resumed_from": [25, *[40] * again]}, final=True) for again in range(3)]
    assert names == ["checkpoint_0000040_final", "checkpoint_0000040_final_1", "checkpoint_0000040_final_2"]


def test_the_pretraining_curves_start_from_the_held_out_loss_before_the_first_step(tmp_path):
    from deepmolm.training.driver import log_metrics

    history = [{"step": step, "loss": 4.0 - step / 10, "lr": 1e-3, "grad_norm": 1.0} for step in range(1, 5)]
    epochs = [{"epoch": 0, "step": 2, "train_loss": 3.85, "holdout_loss": 3.7},
              {"epoch": 1, "step": 4, "train_loss": 3.65, "holdout_loss": 3.5}]
    log_metrics(tmp_path, history, {"holdout_loss_before": 4.1, "holdout_loss_after": 3.5}, epochs=epochs,
                held_out=[{"step": 1, "holdout_loss": 3.9}, {"step": 3, "holdout_loss": 3.6}])
    curves = pretraining_curves(tmp_path, pretraining_figures(tmp_path))
    assert curves["held out"] == [(0, 4.1), (1, 3.9), (2, 3.7), (3, 3.6), (4, 3.5)]
    assert [step for step, _ in curves["training"]] == [1, 2, 3, 4]
    assert pretraining_curves(tmp_path / "none", pretraining_figures(tmp_path / "none")) == {"training": [], "held out": []}
