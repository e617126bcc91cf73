"""Encoder pretraining: the drawings and what each token is asked to count, the corpus (nothing of an
evaluated split, every row accounted for), and the stage's Ray Train run whose export stage 1 loads."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
from rdkit import Chem

from deepmolm.config import ConfigError, load_params
from deepmolm.training.encoder.corpus import build_corpus, read_smiles_file, skeleton
from deepmolm.training.encoder.drawings import ATOM_KINDS, DrawingStyle, atoms_per_cell, pretraining_example
from tests.conftest import PARAMS

STYLE = DrawingStyle()


def test_atoms_are_counted_in_the_token_cell_they_are_drawn_in():
    positions = np.array([[0.1, 0.1], [0.9, 0.1], [0.6, 0.8], [0.99, 0.99], [1.0, 1.0]])
    kinds = np.eye(len(ATOM_KINDS), dtype=np.float32)[[0, 1, 2, 0, 0]]
    counts = atoms_per_cell(positions, kinds, grid=2)
    assert counts.shape == (4, len(ATOM_KINDS))
    # cells row by row: (top-left, top-right, bottom-left, bottom-right); the edge stays in the last cell
    assert counts[:, 0].tolist() == [1, 0, 0, 2] and counts[1, 1] == 1 and counts[3, 2] == 1


def test_an_example_counts_every_atom_once_whatever_the_style():
    smiles = "Clc1ccc(cc1)C(=O)NCCO"  # 9 C, 1 N, 2 O, 1 Cl; 6 aromatic atoms
    totals = []
    for seed in range(4):
        pixels, atoms = pretraining_example(smiles, image_size=64, grid=4, render_factor=2, style=STYLE, seed=(seed,))
        assert pixels.shape == (3, 64, 64) and pixels.dtype == torch.uint8
        assert atoms.shape == (16, len(ATOM_KINDS))
        totals.append(atoms.sum(dim=0).tolist())
    assert totals[0] == [9, 1, 2, 0, 1, 0, 6] and all(t == totals[0] for t in totals)
    first, again = (pretraining_example(smiles, image_size=64, grid=4, render_factor=2, style=STYLE, seed=(s,))
                    for s in (0, 0))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    other = pretraining_example(smiles, image_size=64, grid=4, render_factor=2, style=STYLE, seed=(1,))
    assert not torch.equal(first[0], other[0]), "another seed draws another style"
    assert pretraining_example("C1CC(", image_size=64, grid=4, render_factor=2, style=STYLE, seed=(0,)) \
        == "unparseable_smiles"


def _key(smiles: str) -> str:
    return Chem.MolToInchiKey(Chem.MolFromSmiles(smiles))


def test_the_corpus_leaves_out_every_evaluated_skeleton_and_accounts_for_every_row(tmp_path):
    rows = [{"cid": i, "split": split, "smiles": s, "inchikey": _key(s)} for i, (split, s) in enumerate([
        ("validation", "CCO"), ("validation", "CCCO"), ("validation", "c1ccccc1O"),
        ("test", "CC(=O)O"), ("test", "C[C@H](N)C(=O)O"),
        ("validation", "C[C@@H](N)C(=O)O"),  # the test molecule's enantiomer: the same skeleton
    ])]
    extra = tmp_path / "extra.csv.gz"
    with gzip.open(extra, "wt") as out:
        out.write("SMILES\n" + "\n".join(["CCN", "CC(=O)O", "N[C@@H](C)C(=O)O", "not_a_smiles(", "CCO", "CCCN",
                                          "CCCCN", "c1ccncc1"]) + "\n")
    corpus = build_corpus(rows, train_splits=["validation"], eval_splits=["test"], holdout_fraction=0.0,
                          holdout_seed=0, use_train_split=True, extra_file=extra, extra_molecules=7,
                          corpus_holdout=2, seed=0)
    chosen = corpus.train + corpus.holdout
    assert sorted(chosen) == sorted(["CCO", "CCCO", "c1ccccc1O", "CCN", "CCCN", "CCCCN"])
    assert len(corpus.holdout) == 2 and not set(corpus.holdout) & set(corpus.train)
    assert not {skeleton(_key(s)) for s in chosen} & {skeleton(r["inchikey"]) for r in rows if r["split"] == "test"}
    assert corpus.counts["shards"] == {"read": 6, "used": 3, "evaluated_split": 2, "skeleton_in_evaluated_split": 1}
    assert corpus.counts["extra"] == {"read": 7, "used": 3, "skeleton_in_evaluated_split": 2,
                                      "unparseable_smiles": 1, "duplicate": 1}
    again = build_corpus(rows, train_splits=["validation"], eval_splits=["test"], holdout_fraction=0.0,
                         holdout_seed=0, use_train_split=True, extra_file=extra, extra_molecules=7,
                         corpus_holdout=2, seed=0)
    assert again.holdout == corpus.holdout, "the held-out slice is seeded"


def test_a_smiles_file_needs_its_header(tmp_path):
    plain = tmp_path / "plain.csv"
    plain.write_text("SMILES\nCCO\nCCN\n")
    assert read_smiles_file(plain, 1) == ["CCO"]
    (tmp_path / "bad.csv").write_text("CCO\nCCN\n")
    with pytest.raises(ValueError, match="expected a SMILES header"):
        read_smiles_file(tmp_path / "bad.csv", 5)


def test_one_init_source_for_the_whole_encoder():
    with pytest.raises(ConfigError, match="train.init.encoder holds the whole DeepEncoder: leave train.init.sam"):
        load_params(PARAMS, ["train.init.encoder=models/encoder", "train.init.sam=weights/sam"])
    with pytest.raises(ConfigError, match="train.init.deepencoder holds the whole DeepEncoder: leave train.init.encoder"):
        load_params(PARAMS, ["train.init.encoder=models/encoder", "train.init.deepencoder=weights/deepseek-ocr"])


@pytest.mark.slow
def test_the_stage_pretrains_on_ray_and_stage1_starts_from_its_encoder(small_versions, tokenizer, tmp_path):
    """The pretrain_encoder stage's run on two Ray Train workers: held-out counts before and after,
    the corpus accounted for, and an export that `train.init.encoder` loads into stage 1's model
    (frozen there: pretrained parts train only where a stage's `trainable` says)."""
    import json

    import ray

    from deepmolm.models.deepmolm.weights import read_shapes
    from deepmolm.training.deepmolm.stages import check_weights, initial_model, random_parts
    from deepmolm.training.encoder.launch import pretrain_encoder

    extra = tmp_path / "extra.csv"
    extra.write_text("SMILES\n" + "\n".join(["CCO", "CCN", "c1ccccc1", "CC(=O)O", "CCCCl", "OCCO", "c1ccncc1",
                                             "CC(C)O", "NCCN", "CCOC(=O)C", "c1ccc(O)cc1", "CS(=O)C"] * 3) + "\n")
    overrides = [f"train.models_dir={tmp_path / 'models'}", f"paths.reports_dir={tmp_path / 'reports'}",
                 f"paths.logs_dir={tmp_path / 'logs'}", f"train.runs_dir={tmp_path / 'runs'}", "model.preset=tiny",
                 "train.splits=null", "train.holdout.fraction=0", f"train.encoder_pretrain.molecules_file={extra}",
                 "train.encoder_pretrain.file_molecules=36", "train.encoder_pretrain.holdout_molecules=4",
                 "train.encoder_pretrain.batch_size=4", "train.encoder_pretrain.epochs=1"]
    params = load_params(PARAMS, overrides)
    try:
        summary = pretrain_encoder(params, shards=small_versions[0])
    finally:
        ray.shutdown()
    counts = summary["corpus"]
    assert counts["extra"]["read"] == 36 and counts["extra"]["used"] == 12 and counts["extra"]["duplicate"] == 24
    assert counts["shards"]["read"] == counts["shards"]["used"] == 10  # a TSV source's rows: no split to leave out
    assert summary["molecules"] == 18 and summary["held_out"] == 4 and summary["steps"] == 18 // 4
    before, after = summary["held_out_before"], summary["held_out_after"]
    assert set(before) == set(after) >= {"loss", "token_count_mae", "heavy_atoms_mae", "heavy_atoms_mae_mean_baseline"}
    assert after["loss"] < before["loss"], "a few steps already move a random head's rates toward the counts"
    out = tmp_path / "models" / "encoder"
    metrics = json.loads((tmp_path / "reports" / "train" / "encoder" / "metrics.json").read_text())
    assert metrics["steps"] == summary["steps"] and (out / "provenance.json").is_file()
    shapes = read_shapes(out)
    assert shapes and all(key.startswith(("encoder.sam.", "encoder.compressor.", "encoder.clip.")) for key in shapes)

    stage1 = load_params(PARAMS, [*overrides, f"train.init.encoder={out}"])
    report = check_weights(stage1, tokenizer)
    assert report["problems"] == [] and report["parts"]["encoder"]["mapped"] == len(shapes)
    model = initial_model(stage1, 1, tokenizer, None)
    from safetensors.torch import load_file

    saved = load_file(str(out / "model.safetensors"))
    state = model.state_dict()
    assert all(torch.equal(state[key], value) for key, value in saved.items())
    assert "encoder" not in random_parts(stage1, 1), "a pretrained encoder is not a random part: frozen"


def test_a_recipe_that_does_not_start_from_the_stages_encoder_trains_nothing(tmp_path):
    """`dvc repro` with `recipe=gpu_small` (DeepSeek-OCR's encoder) must not pretrain a paper-size
    encoder on the CPU: the stage leaves a note and its metrics say why."""
    import json

    from tests.conftest import run_cli

    out = tmp_path / "encoder"
    result = run_cli("train", "encoder", "--out", str(out), "--if-used", "--json", "-S", "recipe=gpu_small",
                     "-S", f"paths.reports_dir={tmp_path / 'reports'}", "-S", f"paths.logs_dir={tmp_path / 'logs'}",
                     check=True)
    summary = json.loads(result.stdout)
    assert summary["skipped"] and "gpu_small" in summary["reason"] and "weights/deepseek-ocr" not in summary["reason"]
    assert json.loads((out / "NOT_USED.json").read_text())["reason"] == summary["reason"]
    metrics = json.loads((tmp_path / "reports" / "train" / "encoder" / "metrics.json").read_text())
    assert metrics["skipped"] is True and metrics["steps"] == 0
    assert (tmp_path / "reports" / "train" / "encoder" / "plots" / "metrics").is_dir(), "a declared output, empty"
